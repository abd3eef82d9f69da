//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, section 3.6): one typed encode and
//! decode per PDU, with every bound checked on the way in.
//!
//! Contract:
//! - [`decode`] takes the bytes of a stream and returns the first whole PDU and how many bytes
//!   it took, [`Decoded::Incomplete`] with how many are needed when the PDU is not all there,
//!   or a [`PduError`] that carries the Fatal Error Status and the offset of the bad field,
//!   which is what a Terminate Connection Request reports (3.6.2.9). It never reads past the
//!   PDU's length and refuses a length above the connection's limit before waiting for it.
//! - Digests (CRC-32C, 3.6.1.5) are checked when the connection negotiated them and the PDU
//!   carries them; a PDU whose flags disagree with the negotiation is refused.
//! - The encoders write exactly what a peer expects: the common header, the type's header, the
//!   header digest, padding up to the data offset, the data, the data digest.
//! - Submission and completion entries are the driver's own [`SubmissionEntry`] and
//!   [`CompletionEntry`] layouts, read and written field by field in little-endian.

use tidepool_bindings::nvme::spec::{CompletionEntry, SubmissionEntry};

/// PDU types (figure 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// The header length each type has (HLEN, without digest).
    pub fn header_bytes(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => 128,
            PduType::CapsuleCmd => 72,
            _ => 24,
        }
    }

    /// Whether PDUs of this type may carry a header digest (not the connection set-up ones).
    fn digestible(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }

    /// Whether PDUs of this type may carry data.
    fn carries_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::H2CData
                | PduType::C2HData
                | PduType::H2CTermReq
                | PduType::C2HTermReq
        )
    }
}

/// Common-header flags (figure 6).
pub mod flags {
    pub const HDGST: u8 = 1 << 0;
    pub const DDGST: u8 = 1 << 1;
    /// H2CData / C2HData: the last PDU of the transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded; no response capsule follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal Error Status of a Terminate Connection Request (figure 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Fes {
    InvalidHeaderField = 0x01,
    SequenceError = 0x02,
    HeaderDigestError = 0x03,
    DataOutOfRange = 0x04,
    DataLimitExceeded = 0x05,
    UnsupportedParameter = 0x06,
}

/// A PDU that cannot be taken. With a Fatal Error Status it ends the connection, and is what
/// the TermReq says; without one it is a data digest error, which fails only its command (with
/// a Transient Transport Error, section 3.6.1.5) and leaves the connection up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} (fatal error status {fes:?}, field at byte {fei})")]
pub struct PduError {
    pub fes: Option<Fes>,
    /// Fatal Error Information: the byte offset of the offending field in the PDU.
    pub fei: u32,
    pub what: String,
}

fn fatal(fes: Fes, fei: u32, what: impl Into<String>) -> PduError {
    PduError {
        fes: Some(fes),
        fei,
        what: what.into(),
    }
}

fn invalid(fei: u32, what: impl Into<String>) -> PduError {
    fatal(Fes::InvalidHeaderField, fei, what)
}

/// How a connection frames the PDUs it sends: the digests it negotiated and the data
/// alignment its peer asked for (CPDA or HPDA + 1 dwords, in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub digests: Digests,
    pub pdo_align: usize,
}

impl Framing {
    pub const PLAIN: Framing = Framing {
        digests: Digests {
            header: false,
            data: false,
        },
        pdo_align: 1,
    };
}

/// The digests a connection negotiated at ICReq/ICResp time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

const COMMON_BYTES: usize = 8;
const DIGEST_BYTES: usize = 4;

/// The common header (figure 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: PduType,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// ICReq's and ICResp's parameters (figures 13 and 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitConnection {
    pub pfv: u16,
    /// HPDA (ICReq) or CPDA (ICResp): data alignment in dwords, less one.
    pub data_alignment: u8,
    pub digests: Digests,
    /// MAXR2T (ICReq, 0-based) or MAXH2CDATA (ICResp, bytes).
    pub limit: u32,
}

/// H2CData, C2HData and R2T's fields (figures 16, 17 and 18): the command, the transfer tag
/// (none in C2HData), the offset and the length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

/// One decoded PDU; data is given as its byte range in the buffer `decode` was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    IcReq(InitConnection),
    IcResp(InitConnection),
    TermReq {
        from_host: bool,
        fes: u16,
        fei: u32,
        data: std::ops::Range<usize>,
    },
    CapsuleCmd {
        sqe: SubmissionEntry,
        data: std::ops::Range<usize>,
    },
    CapsuleResp(CompletionEntry),
    H2CData {
        transfer: Transfer,
        last: bool,
        data: std::ops::Range<usize>,
    },
    C2HData {
        transfer: Transfer,
        last: bool,
        success: bool,
        data: std::ops::Range<usize>,
    },
    R2T(Transfer),
}

/// What [`decode`] found at the start of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole PDU of this many bytes.
    Pdu(Pdu, usize),
    /// Not all there yet: at least this many bytes are needed.
    Incomplete(usize),
}

/// Reads a submission entry from its 64 little-endian bytes.
pub fn sqe_from_bytes(b: &[u8]) -> SubmissionEntry {
    let d = |i: usize| le32(b, i * 4);
    SubmissionEntry {
        cdw0: d(0),
        nsid: d(1),
        cdw2: d(2),
        cdw3: d(3),
        mptr: d(4) as u64 | (d(5) as u64) << 32,
        prp1: d(6) as u64 | (d(7) as u64) << 32,
        prp2: d(8) as u64 | (d(9) as u64) << 32,
        cdw10: d(10),
        cdw11: d(11),
        cdw12: d(12),
        cdw13: d(13),
        cdw14: d(14),
        cdw15: d(15),
    }
}

/// Fills a header on the stack, field by field in little-endian (no allocation per PDU).
struct HeaderBytes<const N: usize> {
    bytes: [u8; N],
    at: usize,
}

impl<const N: usize> HeaderBytes<N> {
    fn new() -> Self {
        HeaderBytes {
            bytes: [0; N],
            at: 0,
        }
    }
    fn put(mut self, b: &[u8]) -> Self {
        self.bytes[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
        self
    }
}

/// A submission entry as its 64 little-endian bytes.
fn sqe_bytes(e: &SubmissionEntry) -> [u8; 64] {
    let mut h = HeaderBytes::<64>::new();
    for v in [e.cdw0, e.nsid, e.cdw2, e.cdw3] {
        h = h.put(&v.to_le_bytes());
    }
    for v in [e.mptr, e.prp1, e.prp2] {
        h = h.put(&v.to_le_bytes());
    }
    for v in [e.cdw10, e.cdw11, e.cdw12, e.cdw13, e.cdw14, e.cdw15] {
        h = h.put(&v.to_le_bytes());
    }
    h.bytes
}

fn cqe_from_bytes(b: &[u8]) -> CompletionEntry {
    CompletionEntry {
        dw0: le32(b, 0),
        dw1: le32(b, 4),
        sq_head: le16(b, 8),
        sq_id: le16(b, 10),
        cid: le16(b, 12),
        status: le16(b, 14),
    }
}

fn cqe_bytes(e: &CompletionEntry) -> [u8; 16] {
    let mut h = HeaderBytes::<16>::new()
        .put(&e.dw0.to_le_bytes())
        .put(&e.dw1.to_le_bytes());
    for v in [e.sq_head, e.sq_id, e.cid, e.status] {
        h = h.put(&v.to_le_bytes());
    }
    h.bytes
}

/// Decodes the first PDU of `buf`, refusing one longer than `max_plen` bytes.
pub fn decode(buf: &[u8], digests: Digests, max_plen: u32) -> Result<Decoded, PduError> {
    if buf.len() < COMMON_BYTES {
        return Ok(Decoded::Incomplete(COMMON_BYTES));
    }
    let pdu_type =
        PduType::from_u8(buf[0]).ok_or_else(|| invalid(0, format!("PDU type {:#04x}", buf[0])))?;
    let ch = CommonHeader {
        pdu_type,
        flags: buf[1],
        hlen: buf[2],
        pdo: buf[3],
        plen: le32(buf, 4),
    };
    let hlen = pdu_type.header_bytes();
    if ch.hlen as usize != hlen {
        return Err(invalid(
            2,
            format!("HLEN {} for a {pdu_type:?} (it is {hlen})", ch.hlen),
        ));
    }
    if ch.plen > max_plen {
        return Err(fatal(
            Fes::DataLimitExceeded,
            4,
            format!("PLEN {} above the limit of {max_plen}", ch.plen),
        ));
    }
    let hdgst = ch.flags & flags::HDGST != 0;
    let ddgst = ch.flags & flags::DDGST != 0;
    if pdu_type.digestible() && (hdgst != digests.header || (ddgst && !digests.data)) {
        return Err(invalid(
            1,
            "digest flags that the connection did not negotiate",
        ));
    }
    if !pdu_type.digestible() && (hdgst || ddgst) {
        return Err(invalid(1, "a digest on a connection-management PDU"));
    }
    let header_end = hlen + if hdgst { DIGEST_BYTES } else { 0 };
    let plen = ch.plen as usize;
    let has_data = plen > header_end;
    if plen < header_end {
        return Err(invalid(
            4,
            format!("PLEN {plen} shorter than the header ({header_end})"),
        ));
    }
    if has_data && !pdu_type.carries_data() {
        return Err(invalid(
            4,
            format!("PLEN {plen} gives data to a {pdu_type:?}"),
        ));
    }
    // Where data starts: PDO for data PDUs; TermReq data follows the header directly.
    let data_start = match pdu_type {
        PduType::H2CTermReq | PduType::C2HTermReq => header_end,
        _ if has_data => {
            let pdo = ch.pdo as usize;
            if pdo < header_end || pdo > plen {
                return Err(invalid(
                    3,
                    format!("PDO {pdo} outside {header_end}..={plen}"),
                ));
            }
            pdo
        }
        _ => plen,
    };
    let data_end = if has_data && ddgst {
        if plen < data_start + DIGEST_BYTES {
            return Err(invalid(4, "no room for the data digest"));
        }
        plen - DIGEST_BYTES
    } else {
        plen
    };
    if buf.len() < plen {
        return Ok(Decoded::Incomplete(plen));
    }
    if hdgst {
        let want = crc32c::crc32c(&buf[..hlen]);
        if le32(buf, hlen) != want {
            return Err(fatal(
                Fes::HeaderDigestError,
                hlen as u32,
                "header digest mismatch",
            ));
        }
    }
    if has_data && ddgst && le32(buf, data_end) != crc32c::crc32c(&buf[data_start..data_end]) {
        // Fails its command, not the connection (see PduError).
        return Err(PduError {
            fes: None,
            fei: data_end as u32,
            what: "data digest mismatch".into(),
        });
    }
    let data = data_start..data_end;
    let transfer = |with_tag: bool| Transfer {
        cccid: le16(buf, 8),
        ttag: if with_tag { le16(buf, 10) } else { 0 },
        offset: le32(buf, 12),
        length: le32(buf, 16),
    };
    let pdu = match pdu_type {
        PduType::IcReq | PduType::IcResp => {
            if plen != 128 {
                return Err(invalid(
                    4,
                    format!("PLEN {plen} for an ICReq/ICResp (it is 128)"),
                ));
            }
            let init = InitConnection {
                pfv: le16(buf, 8),
                data_alignment: buf[10],
                digests: Digests {
                    header: buf[11] & 1 != 0,
                    data: buf[11] & 2 != 0,
                },
                limit: le32(buf, 12),
            };
            if init.pfv != 0 {
                return Err(fatal(
                    Fes::UnsupportedParameter,
                    8,
                    format!("PDU format version {}", init.pfv),
                ));
            }
            if init.data_alignment > 31 {
                return Err(invalid(
                    10,
                    format!("data alignment {}", init.data_alignment),
                ));
            }
            if pdu_type == PduType::IcReq {
                Pdu::IcReq(init)
            } else {
                Pdu::IcResp(init)
            }
        }
        PduType::H2CTermReq | PduType::C2HTermReq => Pdu::TermReq {
            from_host: pdu_type == PduType::H2CTermReq,
            fes: le16(buf, 8),
            fei: le32(buf, 10),
            data,
        },
        PduType::CapsuleCmd => Pdu::CapsuleCmd {
            sqe: sqe_from_bytes(&buf[8..72]),
            data,
        },
        PduType::CapsuleResp => Pdu::CapsuleResp(cqe_from_bytes(&buf[8..24])),
        PduType::H2CData | PduType::C2HData => {
            let t = transfer(pdu_type == PduType::H2CData);
            if t.length as usize != data.len() {
                return Err(invalid(
                    16,
                    format!("DATAL {} for {} data bytes", t.length, data.len()),
                ));
            }
            let last = ch.flags & flags::LAST_PDU != 0;
            if pdu_type == PduType::H2CData {
                Pdu::H2CData {
                    transfer: t,
                    last,
                    data,
                }
            } else {
                let success = ch.flags & flags::SUCCESS != 0;
                if success && !last {
                    return Err(invalid(1, "SUCCESS without LAST_PDU"));
                }
                Pdu::C2HData {
                    transfer: t,
                    last,
                    success,
                    data,
                }
            }
        }
        PduType::R2T => Pdu::R2T(transfer(true)),
    };
    Ok(Decoded::Pdu(pdu, plen))
}

/// Writes one PDU: common header, `header` (the type's fields after the common header),
/// digests as negotiated, padding to `pdo_align` bytes before data, the data.
fn encode(
    out: &mut Vec<u8>,
    pdu_type: PduType,
    extra_flags: u8,
    header: &[u8],
    data: &[u8],
    framing: Framing,
) {
    let ddgst = encode_head(out, pdu_type, extra_flags, header, data.len(), framing);
    out.extend_from_slice(data);
    if ddgst {
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
}

/// Writes a PDU up to where its `data_len` bytes of data go (common header, `header`, header
/// digest, padding); returns whether a data digest must follow the data.
fn encode_head(
    out: &mut Vec<u8>,
    pdu_type: PduType,
    extra_flags: u8,
    header: &[u8],
    data_len: usize,
    framing: Framing,
) -> bool {
    let Framing { digests, pdo_align } = framing;
    let hlen = pdu_type.header_bytes();
    debug_assert_eq!(COMMON_BYTES + header.len(), hlen);
    let hdgst = digests.header && pdu_type.digestible();
    let ddgst = digests.data && pdu_type.digestible() && data_len > 0;
    let header_end = hlen + if hdgst { DIGEST_BYTES } else { 0 };
    let pdo = if data_len == 0 {
        0
    } else {
        header_end.next_multiple_of(pdo_align.max(1))
    };
    let plen = if data_len == 0 {
        header_end
    } else {
        pdo + data_len + if ddgst { DIGEST_BYTES } else { 0 }
    };
    let start = out.len();
    let f =
        extra_flags | if hdgst { flags::HDGST } else { 0 } | if ddgst { flags::DDGST } else { 0 };
    out.extend_from_slice(&[pdu_type as u8, f, hlen as u8, pdo as u8]);
    out.extend_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(header);
    if hdgst {
        let crc = crc32c::crc32c(&out[start..start + hlen]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if data_len > 0 {
        out.resize(start + pdo, 0);
    }
    ddgst
}

fn init_header(init: &InitConnection) -> [u8; 120] {
    HeaderBytes::<120>::new()
        .put(&init.pfv.to_le_bytes())
        .put(&[
            init.data_alignment,
            init.digests.header as u8 | (init.digests.data as u8) << 1,
        ])
        .put(&init.limit.to_le_bytes())
        .bytes
}

pub fn encode_ic_req(out: &mut Vec<u8>, init: &InitConnection) {
    encode(
        out,
        PduType::IcReq,
        0,
        &init_header(init),
        &[],
        Framing::PLAIN,
    );
}

pub fn encode_ic_resp(out: &mut Vec<u8>, init: &InitConnection) {
    encode(
        out,
        PduType::IcResp,
        0,
        &init_header(init),
        &[],
        Framing::PLAIN,
    );
}

/// A Terminate Connection Request from the controller (C2H) for a fatal `err`, carrying up to
/// 128 bytes of the offending PDU's header.
pub fn encode_c2h_term_req(out: &mut Vec<u8>, fes: Fes, err: &PduError, offending: &[u8]) {
    let h = HeaderBytes::<16>::new()
        .put(&(fes as u16).to_le_bytes())
        .put(&err.fei.to_le_bytes())
        .bytes;
    let data = &offending[..offending.len().min(128)];
    encode(out, PduType::C2HTermReq, 0, &h, data, Framing::PLAIN);
}

pub fn encode_capsule_cmd(out: &mut Vec<u8>, sqe: &SubmissionEntry, data: &[u8], framing: Framing) {
    encode(out, PduType::CapsuleCmd, 0, &sqe_bytes(sqe), data, framing);
}

pub fn encode_capsule_resp(out: &mut Vec<u8>, cqe: &CompletionEntry, framing: Framing) {
    encode(out, PduType::CapsuleResp, 0, &cqe_bytes(cqe), &[], framing);
}

fn transfer_header(t: &Transfer) -> [u8; 16] {
    HeaderBytes::<16>::new()
        .put(&t.cccid.to_le_bytes())
        .put(&t.ttag.to_le_bytes())
        .put(&t.offset.to_le_bytes())
        .put(&t.length.to_le_bytes())
        .bytes
}

/// C2HData for `data` (its length is the transfer's).
pub fn encode_c2h_data(
    out: &mut Vec<u8>,
    cccid: u16,
    offset: u32,
    data: &[u8],
    last: bool,
    success: bool,
    framing: Framing,
) {
    let ddgst = encode_c2h_data_head(out, cccid, offset, data.len(), last, success, framing);
    out.extend_from_slice(data);
    if ddgst {
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
}

/// C2HData up to its data, for a sender that hands the data to the socket from where it
/// lies; returns whether the data's digest (CRC-32C, little-endian) must follow it.
pub fn encode_c2h_data_head(
    out: &mut Vec<u8>,
    cccid: u16,
    offset: u32,
    data_len: usize,
    last: bool,
    success: bool,
    framing: Framing,
) -> bool {
    let t = Transfer {
        cccid,
        ttag: 0,
        offset,
        length: data_len as u32,
    };
    let f = if last { flags::LAST_PDU } else { 0 } | if success { flags::SUCCESS } else { 0 };
    encode_head(
        out,
        PduType::C2HData,
        f,
        &transfer_header(&t),
        data_len,
        framing,
    )
}

/// H2CData for `data` (its length is the transfer's).
pub fn encode_h2c_data(out: &mut Vec<u8>, t: &Transfer, data: &[u8], last: bool, framing: Framing) {
    debug_assert_eq!(t.length as usize, data.len());
    let f = if last { flags::LAST_PDU } else { 0 };
    encode(out, PduType::H2CData, f, &transfer_header(t), data, framing);
}

pub fn encode_r2t(out: &mut Vec<u8>, t: &Transfer, framing: Framing) {
    encode(out, PduType::R2T, 0, &transfer_header(t), &[], framing);
}

#[cfg(test)]
mod tests;
