//! The NVMe over Fabrics command set (NVMe over Fabrics 1.1, chapter 3) as a target sees it:
//! the Fabrics commands (Connect, Property Get, Property Set, Disconnect) read out of a
//! submission entry, the Connect data, the status codes a target answers with, and a fabrics
//! controller's properties (CAP, VS, CC, CSTS), which the host reads and writes with Property
//! Get/Set instead of a PCIe BAR.
//!
//! **Contract.** [`FabricsCommand::parse`] reads only the fields the command defines and
//! refuses an unknown type ([`Codes::INVALID_OPCODE`]); [`ConnectData::parse`] refuses data
//! of the wrong size or an NQN that is not NUL-terminated within its field
//! ([`ConnectRefusal`], with the offset of the bad field as Connect's IPO reports it).
//! [`Properties`] applies the CC writes a host makes (enable, shutdown) and answers CSTS the
//! way a controller with no latency does: ready as soon as enabled, shutdown complete as soon
//! as asked.

use tidepool_bindings::nvme::spec::{sct, CompletionEntry, Status, SubmissionEntry};

/// The Fabrics command opcode (figure 13 of the Fabrics specification).
pub const OPCODE: u8 = 0x7f;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

/// Bytes of a Connect command's data: host id, controller id, subsystem and host NQNs.
pub const CONNECT_DATA_BYTES: usize = 1024;
/// An NQN's field in the Connect data and the discovery log (NUL-padded).
pub const NQN_FIELD_BYTES: usize = 256;
/// The longest NQN the base specification allows.
pub const NQN_MAX_BYTES: usize = 223;
/// The discovery subsystem's well-known NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Connect's CNTLID for "any controller" (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Status codes a target answers with: generic (SCT 0) and Fabrics command-specific (SCT 1).
pub struct Codes;

impl Codes {
    pub const SUCCESS: Status = Status(0);
    pub const INVALID_OPCODE: Status = Status((sct::GENERIC as u16) << 8 | 0x01);
    pub const INVALID_FIELD: Status = Status((sct::GENERIC as u16) << 8 | 0x02);
    pub const DATA_TRANSFER_ERROR: Status = Status((sct::GENERIC as u16) << 8 | 0x04);
    pub const INTERNAL_ERROR: Status = Status((sct::GENERIC as u16) << 8 | 0x06);
    pub const ABORTED_SQ_DELETION: Status = Status((sct::GENERIC as u16) << 8 | 0x08);
    pub const INVALID_NAMESPACE: Status = Status((sct::GENERIC as u16) << 8 | 0x0b);
    pub const COMMAND_SEQUENCE_ERROR: Status = Status((sct::GENERIC as u16) << 8 | 0x0c);
    pub const SGL_INVALID_DESCRIPTOR: Status = Status((sct::GENERIC as u16) << 8 | 0x11);
    pub const NAMESPACE_WRITE_PROTECTED: Status = Status((sct::GENERIC as u16) << 8 | 0x20);
    pub const LBA_OUT_OF_RANGE: Status = Status((sct::GENERIC as u16) << 8 | 0x80);
    pub const INCOMPATIBLE_FORMAT: Status = Status((sct::COMMAND_SPECIFIC as u16) << 8 | 0x80);
    pub const CONTROLLER_BUSY: Status = Status((sct::COMMAND_SPECIFIC as u16) << 8 | 0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status =
        Status((sct::COMMAND_SPECIFIC as u16) << 8 | 0x82);
    pub const CONNECT_INVALID_HOST: Status = Status((sct::COMMAND_SPECIFIC as u16) << 8 | 0x84);
    /// Set Features' Number of Queues after queues exist, and similar.
    pub const COMMAND_SPECIFIC_INVALID_QUEUE: Status =
        Status((sct::COMMAND_SPECIFIC as u16) << 8 | 0x01);
}

/// One Fabrics command, its fields read out of the submission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FabricsCommand {
    Connect {
        recfmt: u16,
        qid: u16,
        /// Submission queue size, 0-based.
        sqsize: u16,
        cattr: u8,
        /// Keep Alive Timeout in milliseconds (0: none; only on the admin queue).
        kato_ms: u32,
    },
    PropertyGet {
        /// 8-byte property (else 4).
        wide: bool,
        offset: u32,
    },
    PropertySet {
        wide: bool,
        offset: u32,
        value: u64,
    },
    Disconnect,
}

impl FabricsCommand {
    /// The command in `sqe` (opcode [`OPCODE`]); `Err` with the status to answer otherwise.
    pub fn parse(sqe: &SubmissionEntry) -> Result<FabricsCommand, Status> {
        if sqe.opcode() != OPCODE {
            return Err(Codes::INVALID_OPCODE);
        }
        // FCTYPE is byte 4 of the entry, where the NSID of other commands sits.
        match (sqe.nsid & 0xff) as u8 {
            fctype::CONNECT => Ok(FabricsCommand::Connect {
                recfmt: sqe.cdw10 as u16,
                qid: (sqe.cdw10 >> 16) as u16,
                sqsize: sqe.cdw11 as u16,
                cattr: (sqe.cdw11 >> 16) as u8,
                kato_ms: sqe.cdw12,
            }),
            fctype::PROPERTY_GET => Ok(FabricsCommand::PropertyGet {
                wide: sqe.cdw10 & 0x7 == 1,
                offset: sqe.cdw11,
            }),
            fctype::PROPERTY_SET => Ok(FabricsCommand::PropertySet {
                wide: sqe.cdw10 & 0x7 == 1,
                offset: sqe.cdw11,
                value: sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32,
            }),
            fctype::DISCONNECT => Ok(FabricsCommand::Disconnect),
            _ => Err(Codes::INVALID_OPCODE),
        }
    }

    /// The submission entry a host sends for this command (the inverse of [`parse`](Self::parse));
    /// the caller sets the command identifier and the data pointer.
    pub fn entry(&self) -> SubmissionEntry {
        let (fctype, cdw10, cdw11, cdw12, cdw13) = match *self {
            FabricsCommand::Connect {
                recfmt,
                qid,
                sqsize,
                cattr,
                kato_ms,
            } => (
                fctype::CONNECT,
                recfmt as u32 | (qid as u32) << 16,
                sqsize as u32 | (cattr as u32) << 16,
                kato_ms,
                0,
            ),
            FabricsCommand::PropertyGet { wide, offset } => {
                (fctype::PROPERTY_GET, wide as u32, offset, 0, 0)
            }
            FabricsCommand::PropertySet {
                wide,
                offset,
                value,
            } => (
                fctype::PROPERTY_SET,
                wide as u32,
                offset,
                value as u32,
                (value >> 32) as u32,
            ),
            FabricsCommand::Disconnect => (fctype::DISCONNECT, 0, 0, 0, 0),
        };
        let mut e = SubmissionEntry::new(OPCODE, fctype as u32);
        e.cdw10 = cdw10;
        e.cdw11 = cdw11;
        e.cdw12 = cdw12;
        e.cdw13 = cdw13;
        e
    }
}

/// A Fabrics command's failed status as a host reports it: the command-specific codes by their
/// Fabrics names (figure 24 of the Fabrics specification), and for invalid Connect parameters
/// where the bad one is (from DW0's IATTR and IPO).
pub fn describe_refusal(status: Status, dw0: u32) -> String {
    let name = match status.code() {
        c if c == Codes::INCOMPATIBLE_FORMAT => "Incompatible Format",
        c if c == Codes::CONTROLLER_BUSY => "Controller Busy",
        c if c == Codes::CONNECT_INVALID_HOST => "Connect Invalid Host",
        c if c == Codes::CONNECT_INVALID_PARAMETERS => {
            let (in_data, offset) = (dw0 >> 16 & 1 == 1, dw0 as u16);
            let field = match (in_data, offset as usize) {
                (true, SUBNQN_AT) => " (the subsystem NQN: no such subsystem here)",
                (true, HOSTNQN_AT) => " (the host NQN)",
                (true, CNTLID_AT) => " (the controller id)",
                _ => "",
            };
            let place = if in_data { "data" } else { "command" };
            return format!(
                "Connect Invalid Parameters, in the {place} at byte {offset}{field} (sct {:#x}, sc {:#04x})",
                status.sct(),
                status.sc()
            );
        }
        _ => return status.to_string(),
    };
    format!("{name} (sct {:#x}, sc {:#04x})", status.sct(), status.sc())
}

/// Why a Connect was refused, with what its completion reports: the status, and for invalid
/// parameters where the bad one is (IATTR: in the command or in the data; IPO: its byte
/// offset), which go in the completion's DW0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRefusal {
    pub status: Status,
    pub in_data: bool,
    pub offset: u16,
}

impl ConnectRefusal {
    pub fn invalid_parameter(in_data: bool, offset: u16) -> ConnectRefusal {
        ConnectRefusal {
            status: Codes::CONNECT_INVALID_PARAMETERS,
            in_data,
            offset,
        }
    }

    pub fn status(status: Status) -> ConnectRefusal {
        ConnectRefusal {
            status,
            in_data: false,
            offset: 0,
        }
    }

    /// The completion's DW0: IPO in bits 15:0, IATTR in bits 23:16 (invalid parameters only).
    pub fn dw0(&self) -> u32 {
        if self.status == Codes::CONNECT_INVALID_PARAMETERS {
            self.offset as u32 | (self.in_data as u32) << 16
        } else {
            0
        }
    }
}

/// A Connect command's data (figure 20).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub host_id: [u8; 16],
    pub cntlid: u16,
    pub subsystem_nqn: String,
    pub host_nqn: String,
}

/// Byte offsets of the Connect data's fields.
const HOSTID_AT: usize = 0;
const CNTLID_AT: usize = 16;
const SUBNQN_AT: usize = 256;
const HOSTNQN_AT: usize = 512;

/// The NQN in the field at `at`: NUL-terminated, at most [`NQN_MAX_BYTES`], and empty only
/// when `may_be_empty`.
fn nqn_at(data: &[u8], at: usize, may_be_empty: bool) -> Result<String, ConnectRefusal> {
    let field = &data[at..at + NQN_FIELD_BYTES];
    let len = field
        .iter()
        .position(|&b| b == 0)
        .filter(|&n| (n > 0 || may_be_empty) && n <= NQN_MAX_BYTES)
        .ok_or(ConnectRefusal::invalid_parameter(true, at as u16))?;
    std::str::from_utf8(&field[..len])
        .map(str::to_string)
        .map_err(|_| ConnectRefusal::invalid_parameter(true, at as u16))
}

impl ConnectData {
    pub fn parse(data: &[u8]) -> Result<ConnectData, ConnectRefusal> {
        if data.len() != CONNECT_DATA_BYTES {
            // The command's data pointer described the wrong length (SGL1 at byte 24).
            return Err(ConnectRefusal::invalid_parameter(false, 24));
        }
        let mut host_id = [0u8; 16];
        host_id.copy_from_slice(&data[HOSTID_AT..HOSTID_AT + 16]);
        Ok(ConnectData {
            host_id,
            cntlid: u16::from_le_bytes([data[CNTLID_AT], data[CNTLID_AT + 1]]),
            subsystem_nqn: nqn_at(data, SUBNQN_AT, false)?,
            // SPDK's initiator sends none unless told one, and SPDK's target and the kernel's
            // let it in where any host may connect: so does this one (an empty host NQN is
            // in no subsystem's host list).
            host_nqn: nqn_at(data, HOSTNQN_AT, true)?,
        })
    }

    /// The data's bytes (an initiator sends them; tests build Connects with it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; CONNECT_DATA_BYTES];
        out[HOSTID_AT..HOSTID_AT + 16].copy_from_slice(&self.host_id);
        out[CNTLID_AT..CNTLID_AT + 2].copy_from_slice(&self.cntlid.to_le_bytes());
        let put = |out: &mut Vec<u8>, at: usize, s: &str| {
            let n = s.len().min(NQN_FIELD_BYTES - 1);
            out[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(&mut out, SUBNQN_AT, &self.subsystem_nqn);
        put(&mut out, HOSTNQN_AT, &self.host_nqn);
        out
    }
}

/// Property offsets (the PCIe register offsets, figure 35 of the Fabrics specification).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
}

/// NVMe version 1.4.0, as VS reports it.
pub const VERSION_1_4: u32 = 1 << 16 | 4 << 8;

/// A fabrics controller's properties: what the host reads with Property Get and changes with
/// Property Set. Only CC is writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Properties {
    /// Maximum Queue Entries Supported, 0-based (CAP.MQES).
    pub mqes: u16,
    /// Keep-alive-free timeout the host may wait for CSTS.RDY, in 500 ms units (CAP.TO).
    pub timeout_500ms: u8,
    pub cc: u32,
}

/// CC and CSTS bits.
mod bits {
    pub const CC_EN: u32 = 1;
    pub const CC_SHN_SHIFT: u32 = 14;
    pub const CSTS_RDY: u32 = 1;
    pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;
}

impl Properties {
    pub fn new(mqes: u16) -> Properties {
        Properties {
            mqes,
            timeout_500ms: 30,
            cc: 0,
        }
    }

    /// CAP: MQES, CQR (contiguous queues required: set, as fabrics requires), TO, CSS (NVM
    /// command set), MPSMIN and MPSMAX 0 (4 KiB).
    pub fn cap(&self) -> u64 {
        self.mqes as u64 | 1 << 16 | (self.timeout_500ms as u64) << 24 | 1 << 37
    }

    pub fn csts(&self) -> u32 {
        let mut csts = 0;
        if self.cc & bits::CC_EN != 0 {
            csts |= bits::CSTS_RDY;
        }
        if (self.cc >> bits::CC_SHN_SHIFT) & 0x3 != 0 {
            csts |= bits::CSTS_SHST_COMPLETE;
        }
        csts
    }

    /// Whether the host enabled the controller (CC.EN), the condition for any command other
    /// than Fabrics ones.
    pub fn enabled(&self) -> bool {
        self.cc & bits::CC_EN != 0 && self.csts() & bits::CSTS_SHST_COMPLETE == 0
    }

    /// Property Get: the value, or the status for an offset or width that does not exist.
    pub fn get(&self, wide: bool, offset: u32) -> Result<u64, Status> {
        match (offset, wide) {
            (property::CAP, true) => Ok(self.cap()),
            (property::VS, false) => Ok(VERSION_1_4 as u64),
            (property::CC, false) => Ok(self.cc as u64),
            (property::CSTS, false) => Ok(self.csts() as u64),
            _ => Err(Codes::INVALID_FIELD),
        }
    }

    /// Property Set: only CC, 4 bytes wide.
    pub fn set(&mut self, wide: bool, offset: u32, value: u64) -> Result<(), Status> {
        match (offset, wide) {
            (property::CC, false) => {
                self.cc = value as u32;
                Ok(())
            }
            _ => Err(Codes::INVALID_FIELD),
        }
    }
}

/// A completion for command `cid` with `status` and result `dw0`/`dw1`; the queue pair sets
/// `sq_head` and `sq_id` (SQ flow control, unless the host's Connect disabled it).
pub fn completion(cid: u16, status: Status, dw0: u32, dw1: u32) -> CompletionEntry {
    CompletionEntry {
        dw0,
        dw1,
        sq_head: 0,
        sq_id: 0,
        cid,
        // The phase bit is meaningless on a fabric; the status field starts at bit 1.
        status: status.0 << 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fabrics(fctype: u8, cdw10: u32, cdw11: u32, cdw12: u32, cdw13: u32) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(OPCODE, fctype as u32);
        sqe.cdw10 = cdw10;
        sqe.cdw11 = cdw11;
        sqe.cdw12 = cdw12;
        sqe.cdw13 = cdw13;
        sqe
    }

    #[test]
    fn fabrics_commands_are_read_from_their_fields_and_unknown_ones_refused() {
        let connect = fabrics(fctype::CONNECT, 3 << 16, 127 | 0x5 << 16, 15_000, 0);
        assert_eq!(
            FabricsCommand::parse(&connect),
            Ok(FabricsCommand::Connect {
                recfmt: 0,
                qid: 3,
                sqsize: 127,
                cattr: 5,
                kato_ms: 15_000
            })
        );
        let get = fabrics(fctype::PROPERTY_GET, 1, property::CAP, 0, 0);
        assert_eq!(
            FabricsCommand::parse(&get),
            Ok(FabricsCommand::PropertyGet {
                wide: true,
                offset: 0
            })
        );
        let set = fabrics(fctype::PROPERTY_SET, 0, property::CC, 0x46_0001, 7);
        assert_eq!(
            FabricsCommand::parse(&set),
            Ok(FabricsCommand::PropertySet {
                wide: false,
                offset: property::CC,
                value: 7 << 32 | 0x46_0001
            })
        );
        for sqe in [connect, get, set] {
            let cmd = FabricsCommand::parse(&sqe).unwrap();
            assert_eq!(
                cmd.entry(),
                sqe,
                "a host's entry for {cmd:?} reads back as sent"
            );
        }
        assert_eq!(
            FabricsCommand::parse(&fabrics(0x05, 0, 0, 0, 0)),
            Err(Codes::INVALID_OPCODE)
        );
        assert_eq!(
            FabricsCommand::parse(&SubmissionEntry::new(0x06, 1)),
            Err(Codes::INVALID_OPCODE)
        );
    }

    #[test]
    fn connect_data_round_trips_and_bad_nqns_are_refused_with_their_offset() {
        let data = ConnectData {
            host_id: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subsystem_nqn: "nqn.2016-06.io.tidepool:vol0".into(),
            host_nqn: "nqn.2014-08.org.nvmexpress:uuid:0000".into(),
        };
        let bytes = data.to_bytes();
        assert_eq!(bytes.len(), CONNECT_DATA_BYTES);
        assert_eq!(ConnectData::parse(&bytes), Ok(data));

        let short = ConnectData::parse(&bytes[..512]).unwrap_err();
        assert_eq!(short.status, Codes::CONNECT_INVALID_PARAMETERS);
        assert!(!short.in_data);
        let mut unterminated = bytes.clone();
        unterminated[SUBNQN_AT..SUBNQN_AT + NQN_FIELD_BYTES].fill(b'a');
        let e = ConnectData::parse(&unterminated).unwrap_err();
        assert_eq!((e.in_data, e.offset), (true, SUBNQN_AT as u16));
        assert_eq!(e.dw0(), 1 << 16 | SUBNQN_AT as u32);
        let mut empty_host = bytes.clone();
        empty_host[HOSTNQN_AT..HOSTNQN_AT + NQN_FIELD_BYTES].fill(0);
        assert_eq!(
            ConnectData::parse(&empty_host).unwrap().host_nqn,
            "",
            "an empty host NQN is taken (SPDK's initiator sends one)"
        );
        let mut empty_subsystem = bytes;
        empty_subsystem[SUBNQN_AT..SUBNQN_AT + NQN_FIELD_BYTES].fill(0);
        let e = ConnectData::parse(&empty_subsystem).unwrap_err();
        assert_eq!(e.offset, SUBNQN_AT as u16);
    }

    #[test]
    fn properties_follow_the_host_s_enable_and_shutdown() {
        let mut p = Properties::new(127);
        assert_eq!(p.get(true, property::CAP).unwrap() & 0xffff, 127);
        assert_eq!(
            p.get(true, property::CAP).unwrap() >> 37 & 1,
            1,
            "NVM command set"
        );
        assert_eq!(p.get(false, property::VS), Ok(0x1_0400));
        assert_eq!(p.get(false, property::CSTS), Ok(0));
        assert!(!p.enabled());
        // Enable (EN, IOSQES 6, IOCQES 4, as the Linux host writes it).
        p.set(false, property::CC, 0x46_0001).unwrap();
        assert_eq!(p.get(false, property::CSTS), Ok(1));
        assert!(p.enabled());
        // Normal shutdown.
        p.set(false, property::CC, 0x46_0001 | 1 << 14).unwrap();
        assert_eq!(p.get(false, property::CSTS).unwrap() & 0xc, 0x8);
        assert!(!p.enabled());
        // Read-only or unknown properties, and wrong widths, are refused.
        assert_eq!(p.set(false, property::CSTS, 0), Err(Codes::INVALID_FIELD));
        assert_eq!(p.set(true, property::CC, 0), Err(Codes::INVALID_FIELD));
        assert_eq!(p.get(false, property::CAP), Err(Codes::INVALID_FIELD));
        assert_eq!(p.get(false, 0x40), Err(Codes::INVALID_FIELD));
    }

    #[test]
    fn a_completion_carries_its_status_above_the_phase_bit() {
        let c = completion(9, Codes::CONNECT_INVALID_HOST, 0, 0);
        assert_eq!(c.cid, 9);
        assert_eq!(c.status, 0x184 << 1);
        assert_eq!(c.status().sct(), 1);
        assert_eq!(c.status().sc(), 0x84);
    }
}
