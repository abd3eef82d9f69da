//! One NVMe/TCP queue's connection set up the blocking way, as a host: TCP connect, ICReq and
//! ICResp, and the Fabrics Connect (NVMe/TCP 1.0, 3.3 and 3.6; NVMe over Fabrics 1.1, 3.3),
//! then commands one at a time. The controller's thread uses it for the admin queue for its
//! whole life, and to open each reactor's I/O queue before handing the socket over.
//!
//! Contract:
//! - Every read and write has a deadline (the link's `timeout`); a late peer is an error, never
//!   a hang.
//! - [`Link::command`] sends one command, with its data in the capsule when it has any (the
//!   admin queue's data is small: Connect's 1024 bytes), and returns the completion with the
//!   data of the C2HData PDUs before it. Anything else from the peer is a protocol error.
//! - A refused command is [`TcpError::Status`] with the status the controller gave.

use crate::nvmf::fabrics::{ConnectData, FabricsCommand, CNTLID_DYNAMIC};
use crate::nvmf::pdu::{self, Decoded, Digests, Framing, InitConnection, Pdu};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tidepool_bindings::nvme::spec::{CompletionEntry, Status, SubmissionEntry};

/// The largest PDU a link takes from a controller (a C2HData of an admin command's data).
const MAX_ADMIN_PDU: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("{addr}: {op}: {err}")]
    Io {
        addr: SocketAddr,
        op: &'static str,
        err: std::io::Error,
    },
    #[error("{addr}: protocol error: {what}")]
    Protocol { addr: SocketAddr, what: String },
    #[error("{addr}: {op} refused: {detail}")]
    Status {
        addr: SocketAddr,
        op: &'static str,
        status: Status,
        /// The status named for the command (a Connect's codes are the Fabrics ones).
        detail: String,
    },
}

/// Where a controller is and who connects to it: what every queue's connection repeats.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub host_id: [u8; 16],
    pub digests: Digests,
    /// Deadline of each connect, read and write.
    pub timeout: Duration,
}

/// What a queue asks for in its Connect.
#[derive(Clone, Copy, Debug)]
pub struct QueueRequest {
    pub qid: u16,
    pub entries: u16,
    /// The controller (admin queue: [`CNTLID_DYNAMIC`], any).
    pub cntlid: u16,
    /// Keep Alive Timeout (admin queue only; 0: none).
    pub kato_ms: u32,
}

/// A connected queue: the socket, the framing both ends agreed, and the controller's limits.
pub struct Link {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub framing: Framing,
    /// The most data one H2CData PDU may carry (MAXH2CDATA from ICResp).
    pub max_h2c: u32,
    /// The controller that took the Connect, and the queue's id in it.
    pub cntlid: u16,
    pub qid: u16,
    /// The queue's entries (its Connect's SQSIZE + 1).
    pub entries: u16,
    next_cid: u16,
}

impl Link {
    /// Connects one queue: TCP, ICReq/ICResp, then the Fabrics Connect.
    pub fn open(ep: &Endpoint, q: QueueRequest) -> Result<Link, TcpError> {
        let addr = ep.addr;
        let io = |op| move |err| TcpError::Io { addr, op, err };
        let stream = TcpStream::connect_timeout(&addr, ep.timeout).map_err(io("connect"))?;
        stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        stream
            .set_read_timeout(Some(ep.timeout))
            .map_err(io("read timeout"))?;
        stream
            .set_write_timeout(Some(ep.timeout))
            .map_err(io("write timeout"))?;
        let mut link = Link {
            stream,
            addr,
            framing: Framing::PLAIN,
            max_h2c: 0,
            cntlid: 0,
            qid: q.qid,
            entries: q.entries,
            next_cid: 0,
        };
        let mut out = Vec::new();
        pdu::encode_ic_req(
            &mut out,
            &InitConnection {
                pfv: 0,
                data_alignment: 0,
                digests: ep.digests,
                // MAXR2T, 0-based: one R2T outstanding per command.
                limit: 0,
            },
        );
        link.stream.write_all(&out).map_err(io("ICReq"))?;
        let resp = match link.read_pdu()? {
            (Pdu::IcResp(r), _) => r,
            (other, _) => return Err(link.protocol(format!("{other:?} instead of ICResp"))),
        };
        if resp.pfv != 0 {
            return Err(link.protocol(format!("PDU format version {}", resp.pfv)));
        }
        if resp.digests != ep.digests {
            return Err(link.protocol(format!(
                "digests {:?} asked, {:?} granted",
                ep.digests, resp.digests
            )));
        }
        if resp.limit < 4096 {
            return Err(link.protocol(format!("MAXH2CDATA {} below 4096", resp.limit)));
        }
        link.framing = Framing {
            digests: resp.digests,
            pdo_align: (resp.data_alignment as usize + 1) * 4,
        };
        link.max_h2c = resp.limit;
        let connect = FabricsCommand::Connect {
            recfmt: 0,
            qid: q.qid,
            sqsize: q.entries - 1,
            cattr: 0,
            kato_ms: q.kato_ms,
        };
        let data = ConnectData {
            host_id: ep.host_id,
            cntlid: if q.qid == 0 { CNTLID_DYNAMIC } else { q.cntlid },
            subsystem_nqn: ep.subnqn.clone(),
            host_nqn: ep.hostnqn.clone(),
        };
        let (cqe, _) = link.command("Connect", connect.entry(), &data.to_bytes(), 0)?;
        link.cntlid = cqe.dw0 as u16;
        Ok(link)
    }

    fn protocol(&self, what: String) -> TcpError {
        TcpError::Protocol {
            addr: self.addr,
            what,
        }
    }

    /// Reads one whole PDU.
    fn read_pdu(&mut self) -> Result<(Pdu, Vec<u8>), TcpError> {
        let addr = self.addr;
        let io = |err| TcpError::Io {
            addr,
            op: "read",
            err,
        };
        let mut buf = vec![0u8; 8];
        self.stream.read_exact(&mut buf).map_err(io)?;
        let plen = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        if !(8..=MAX_ADMIN_PDU).contains(&plen) {
            return Err(self.protocol(format!("PDU length {plen}")));
        }
        buf.resize(plen as usize, 0);
        self.stream.read_exact(&mut buf[8..]).map_err(io)?;
        match pdu::decode(&buf, self.framing.digests, MAX_ADMIN_PDU) {
            Ok(Decoded::Pdu(p, _)) => Ok((p, buf)),
            Ok(Decoded::Incomplete(n)) => Err(self.protocol(format!("PDU short of {n} bytes"))),
            Err(e) => Err(self.protocol(e.to_string())),
        }
    }

    /// Sends `sqe` with `out` in its capsule (or `in_bytes` for the controller to return) and
    /// waits for its completion; a failed status is an error.
    pub fn command(
        &mut self,
        op: &'static str,
        mut sqe: SubmissionEntry,
        out: &[u8],
        in_bytes: u32,
    ) -> Result<(CompletionEntry, Vec<u8>), TcpError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        if out.is_empty() {
            sqe.set_sgl(in_bytes, false);
        } else {
            sqe.set_sgl(out.len() as u32, true);
        }
        let mut bytes = Vec::with_capacity(128 + out.len());
        pdu::encode_capsule_cmd(&mut bytes, &sqe, out, self.framing);
        let addr = self.addr;
        self.stream
            .write_all(&bytes)
            .map_err(|err| TcpError::Io { addr, op, err })?;
        let mut data = Vec::new();
        loop {
            match self.read_pdu()? {
                (
                    Pdu::C2HData {
                        transfer,
                        data: range,
                        last,
                        success,
                    },
                    buf,
                ) if transfer.cccid == cid
                    && transfer.offset as usize == data.len()
                    && !range.is_empty() =>
                {
                    data.extend_from_slice(&buf[range]);
                    if data.len() > in_bytes as usize {
                        return Err(self.protocol(format!("{op}: more data than asked")));
                    }
                    if last && success {
                        // The controller's success flag stands for a CapsuleResp it does not
                        // send (NVMe/TCP 1.0, 3.6.2.7): all zero but the command's identifier.
                        let cqe = CompletionEntry {
                            cid,
                            ..CompletionEntry::default()
                        };
                        return Ok((cqe, data));
                    }
                }
                (Pdu::CapsuleResp(cqe), _) if cqe.cid == cid => {
                    let status = cqe.status();
                    if !status.is_success() {
                        let detail = if sqe.opcode() == crate::nvmf::fabrics::OPCODE {
                            crate::nvmf::fabrics::describe_refusal(status, cqe.dw0)
                        } else {
                            status.to_string()
                        };
                        return Err(TcpError::Status {
                            addr,
                            op,
                            status,
                            detail,
                        });
                    }
                    return Ok((cqe, data));
                }
                (other, _) => {
                    return Err(self.protocol(format!("{op}: {other:?} unexpected")));
                }
            }
        }
    }

    /// Property Get (8 bytes when `wide`).
    pub fn property_get(&mut self, offset: u32, wide: bool) -> Result<u64, TcpError> {
        let sqe = FabricsCommand::PropertyGet { wide, offset }.entry();
        let (cqe, _) = self.command("Property Get", sqe, &[], 0)?;
        Ok(cqe.dw0 as u64 | (cqe.dw1 as u64) << 32)
    }

    /// Property Set (4 bytes).
    pub fn property_set(&mut self, offset: u32, value: u32) -> Result<(), TcpError> {
        let sqe = FabricsCommand::PropertySet {
            wide: false,
            offset,
            value: value as u64,
        }
        .entry();
        self.command("Property Set", sqe, &[], 0).map(|_| ())
    }
}
