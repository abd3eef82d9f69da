//! A target controller's admin queue: the commands an NVMe/TCP host sends on queue 0 after
//! its Connect, executed against the controller's state ([`Controller`]).
//!
//! **Contract.** [`Controller::execute_admin`] takes one submission entry and returns what
//! the queue pair sends back ([`AdminReply`]): a completion, data and then a completion, or
//! nothing yet (an Asynchronous Event Request is held until an event or the controller's
//! end). It never does I/O and never panics on what a host sends: an unknown opcode, CNS,
//! log page or feature gets its NVMe status and changes nothing. Until the host enables the
//! controller (CC.EN through Property Set), only Fabrics commands are executed; the rest get
//! Command Sequence Error.
//!
//! Supported: Identify (controller, namespace, active namespace list, namespace
//! identification descriptors), Get Log Page (error information, SMART / health, firmware
//! slots, and the discovery log on a discovery controller), Get/Set Features (number of
//! queues, keep alive timer, asynchronous event configuration), Keep Alive, Asynchronous
//! Event Request, and the Fabrics Property Get/Set.

use super::fabrics::{self, Codes, FabricsCommand, Properties};
use super::identify::{self, ControllerInfo, DiscoveryEntry, NamespaceInfo};
use tidepool_bindings::nvme::spec::{
    admin, cns, feature, CompletionEntry, Status, SubmissionEntry,
};

/// Admin opcodes beyond the driver's (`spec::admin`).
pub mod opcode {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
}

/// Log page identifiers.
pub mod log {
    pub const ERROR: u8 = 0x01;
    pub const HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers beyond the driver's (`spec::feature`).
pub mod features {
    pub const ASYNC_EVENT_CONFIG: u32 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u32 = 0x0f;
}

/// Namespace identification descriptor list (CNS 03h).
const CNS_NS_DESCRIPTORS: u32 = 0x03;
/// Asynchronous Event Requests a controller holds at once (AERL + 1).
pub const MAX_HELD_AERS: usize = 4;
/// Asynchronous Event Request Limit Exceeded (command specific).
const AER_LIMIT_EXCEEDED: Status = Status(1 << 8 | 0x05);

/// What the queue pair sends for one admin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminReply {
    Complete(CompletionEntry),
    /// C2H data (at most the length the command's data pointer gave), then the completion.
    Data(Vec<u8>, CompletionEntry),
    /// No answer yet (a held Asynchronous Event Request).
    Held,
}

/// One controller: what the host connected to and what it set.
#[derive(Clone, Debug)]
pub struct Controller {
    pub info: ControllerInfo,
    pub namespaces: Vec<NamespaceInfo>,
    /// The discovery log's entries (a discovery controller's only content).
    pub discovery: Vec<DiscoveryEntry>,
    pub discovery_generation: u64,
    pub properties: Properties,
    /// Keep Alive Timeout in ms (0: none).
    pub kato_ms: u32,
    /// I/O queues the host may connect, granted by Set Features Number of Queues.
    pub io_queues_granted: u16,
    /// I/O queues this controller offers at most.
    pub max_io_queues: u16,
    pub async_event_config: u32,
    /// Held Asynchronous Event Requests, by command id.
    pub held_aers: Vec<u16>,
}

/// The length the command's first SGL descriptor gives (bytes 32-35 of the entry): what the
/// host's buffer holds.
fn sgl_length(sqe: &SubmissionEntry) -> usize {
    sqe.prp2 as u32 as usize
}

fn done(sqe: &SubmissionEntry, status: Status) -> AdminReply {
    AdminReply::Complete(fabrics::completion(sqe.cid(), status, 0, 0))
}

fn done_with(sqe: &SubmissionEntry, dw0: u32, dw1: u32) -> AdminReply {
    AdminReply::Complete(fabrics::completion(sqe.cid(), Codes::SUCCESS, dw0, dw1))
}

/// `data`, cut to the host's buffer, and a successful completion.
fn data(sqe: &SubmissionEntry, mut bytes: Vec<u8>) -> AdminReply {
    bytes.truncate(sgl_length(sqe));
    AdminReply::Data(bytes, fabrics::completion(sqe.cid(), Codes::SUCCESS, 0, 0))
}

impl Controller {
    pub fn execute_admin(&mut self, sqe: &SubmissionEntry) -> AdminReply {
        if sqe.opcode() == fabrics::OPCODE {
            return self.fabrics(sqe);
        }
        if !self.properties.enabled() {
            return done(sqe, Codes::COMMAND_SEQUENCE_ERROR);
        }
        match sqe.opcode() {
            admin::IDENTIFY => self.identify(sqe),
            opcode::GET_LOG_PAGE => self.log_page(sqe),
            admin::SET_FEATURES => self.set_feature(sqe),
            admin::GET_FEATURES => self.get_feature(sqe),
            admin::KEEP_ALIVE => done(sqe, Codes::SUCCESS),
            opcode::ASYNC_EVENT_REQUEST if self.held_aers.len() < MAX_HELD_AERS => {
                self.held_aers.push(sqe.cid());
                AdminReply::Held
            }
            opcode::ASYNC_EVENT_REQUEST => done(sqe, AER_LIMIT_EXCEEDED),
            _ => done(sqe, Codes::INVALID_OPCODE),
        }
    }

    fn fabrics(&mut self, sqe: &SubmissionEntry) -> AdminReply {
        match FabricsCommand::parse(sqe) {
            Ok(FabricsCommand::PropertyGet { wide, offset }) => {
                match self.properties.get(wide, offset) {
                    Ok(v) => done_with(sqe, v as u32, (v >> 32) as u32),
                    Err(status) => done(sqe, status),
                }
            }
            Ok(FabricsCommand::PropertySet {
                wide,
                offset,
                value,
            }) => match self.properties.set(wide, offset, value) {
                Ok(()) => done(sqe, Codes::SUCCESS),
                Err(status) => done(sqe, status),
            },
            // A second Connect on a connected queue.
            Ok(FabricsCommand::Connect { .. }) => done(sqe, Codes::COMMAND_SEQUENCE_ERROR),
            Ok(FabricsCommand::Disconnect) => done(sqe, Codes::SUCCESS),
            Err(status) => done(sqe, status),
        }
    }

    fn namespace(&self, nsid: u32) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }

    fn identify(&self, sqe: &SubmissionEntry) -> AdminReply {
        let which = sqe.cdw10 & 0xff;
        match which {
            cns::CONTROLLER => data(sqe, identify::controller(&self.info)),
            cns::NAMESPACE | CNS_NS_DESCRIPTORS if self.info.discovery => {
                done(sqe, Codes::INVALID_NAMESPACE)
            }
            cns::NAMESPACE => match self.namespace(sqe.nsid) {
                Some(ns) => data(sqe, identify::namespace(ns)),
                // An id the subsystem may use but does not: a zero-filled structure.
                None if sqe.nsid >= 1 && sqe.nsid <= self.info.max_nsid => {
                    data(sqe, vec![0; identify::IDENTIFY_BYTES])
                }
                None => done(sqe, Codes::INVALID_NAMESPACE),
            },
            cns::ACTIVE_NAMESPACES if sqe.nsid >= 0xffff_fffe => {
                done(sqe, Codes::INVALID_NAMESPACE)
            }
            cns::ACTIVE_NAMESPACES => {
                let ids: Vec<u32> = self.namespaces.iter().map(|n| n.nsid).collect();
                data(sqe, identify::active_namespaces(&ids, sqe.nsid))
            }
            CNS_NS_DESCRIPTORS => match self.namespace(sqe.nsid) {
                Some(ns) => data(sqe, identify::namespace_descriptors(ns)),
                None => done(sqe, Codes::INVALID_NAMESPACE),
            },
            _ => done(sqe, Codes::INVALID_FIELD),
        }
    }

    fn log_page(&self, sqe: &SubmissionEntry) -> AdminReply {
        let lid = (sqe.cdw10 & 0xff) as u8;
        // NUMD (0-based dwords): NUMDL in CDW10 31:16, NUMDU in CDW11 15:0.
        let dwords = ((sqe.cdw10 >> 16) as u64 | ((sqe.cdw11 & 0xffff) as u64) << 16) + 1;
        let offset = sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32;
        let page = match lid {
            log::DISCOVERY if self.info.discovery => {
                identify::discovery_log(self.discovery_generation, &self.discovery)
            }
            // No errors logged, nothing to report on health, one firmware slot.
            log::ERROR if !self.info.discovery => vec![0; 64],
            log::HEALTH if !self.info.discovery => vec![0; 512],
            log::FIRMWARE_SLOT if !self.info.discovery => {
                let mut page = vec![0; 512];
                page[0] = 1; // AFI: slot 1 active
                let fw = self.info.firmware.as_bytes();
                page[8..8 + fw.len().min(8)].copy_from_slice(&fw[..fw.len().min(8)]);
                page[8 + fw.len().min(8)..16].fill(b' ');
                page
            }
            _ => return done(sqe, Codes::INVALID_FIELD),
        };
        if !offset.is_multiple_of(4) || offset > page.len() as u64 {
            return done(sqe, Codes::INVALID_FIELD);
        }
        let end = (offset + dwords * 4).min(page.len() as u64);
        let mut bytes = page[offset as usize..end as usize].to_vec();
        // Past the page's end the host reads zeroes, up to what it asked.
        bytes.resize((dwords * 4).min(sgl_length(sqe) as u64) as usize, 0);
        data(sqe, bytes)
    }

    fn set_feature(&mut self, sqe: &SubmissionEntry) -> AdminReply {
        match sqe.cdw10 & 0xff {
            feature::NUMBER_OF_QUEUES => {
                let (sq, cq) = (sqe.cdw11 & 0xffff, sqe.cdw11 >> 16);
                if sq == 0xffff || cq == 0xffff {
                    return done(sqe, Codes::INVALID_FIELD);
                }
                // 0-based counts; grant what was asked, up to what this controller has.
                let asked = sq.min(cq) as u16 + 1;
                self.io_queues_granted = asked.min(self.max_io_queues);
                let n = self.io_queues_granted.saturating_sub(1) as u32;
                done_with(sqe, n | n << 16, 0)
            }
            features::KEEP_ALIVE_TIMER => {
                self.kato_ms = sqe.cdw11;
                done(sqe, Codes::SUCCESS)
            }
            features::ASYNC_EVENT_CONFIG => {
                self.async_event_config = sqe.cdw11;
                done(sqe, Codes::SUCCESS)
            }
            _ => done(sqe, Codes::INVALID_FIELD),
        }
    }

    fn get_feature(&self, sqe: &SubmissionEntry) -> AdminReply {
        match sqe.cdw10 & 0xff {
            feature::NUMBER_OF_QUEUES => {
                let n = self.io_queues_granted.saturating_sub(1) as u32;
                done_with(sqe, n | n << 16, 0)
            }
            features::KEEP_ALIVE_TIMER => done_with(sqe, self.kato_ms, 0),
            features::ASYNC_EVENT_CONFIG => done_with(sqe, self.async_event_config, 0),
            _ => done(sqe, Codes::INVALID_FIELD),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::fabrics::{fctype, property};

    fn controller(discovery: bool) -> Controller {
        Controller {
            info: ControllerInfo {
                cntlid: 1,
                serial: "TP1".into(),
                model: "tidepool".into(),
                firmware: "0.1".into(),
                subsystem_nqn: "nqn.2016-06.io.tidepool:a".into(),
                discovery,
                max_nsid: 32,
                mdts: 5,
                max_commands: 128,
                in_capsule_bytes: 4096,
                keep_alive_100ms: 100,
                volatile_cache: false,
            },
            namespaces: vec![NamespaceInfo {
                nsid: 1,
                num_blocks: 2048,
                block_size: 512,
                uuid: [1; 16],
                deallocated_reads_zeroes: true,
            }],
            discovery: vec![],
            discovery_generation: 1,
            properties: Properties::new(127),
            kato_ms: 0,
            io_queues_granted: 0,
            max_io_queues: 8,
            async_event_config: 0,
            held_aers: vec![],
        }
    }

    fn cmd(opcode: u8, nsid: u32, cdw10: u32, cdw11: u32, len: u32) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(opcode, nsid);
        sqe.cdw10 = cdw10;
        sqe.cdw11 = cdw11;
        sqe.prp2 = len as u64;
        sqe.set_cid(7);
        sqe
    }

    fn status(r: &AdminReply) -> Status {
        match r {
            AdminReply::Complete(c) | AdminReply::Data(_, c) => c.status(),
            AdminReply::Held => panic!("held"),
        }
    }

    fn enable(c: &mut Controller) {
        let set = cmd(
            fabrics::OPCODE,
            fctype::PROPERTY_SET as u32,
            0,
            property::CC,
            0,
        );
        let mut set = set;
        set.cdw12 = 0x46_0001;
        assert_eq!(status(&c.execute_admin(&set)), Codes::SUCCESS);
    }

    #[test]
    fn nothing_but_fabrics_commands_runs_before_the_host_enables_the_controller() {
        let mut c = controller(false);
        let id = cmd(admin::IDENTIFY, 0, cns::CONTROLLER, 0, 4096);
        assert_eq!(status(&c.execute_admin(&id)), Codes::COMMAND_SEQUENCE_ERROR);
        let cap = cmd(
            fabrics::OPCODE,
            fctype::PROPERTY_GET as u32,
            1,
            property::CAP,
            0,
        );
        match c.execute_admin(&cap) {
            AdminReply::Complete(cqe) => assert_eq!(cqe.dw0 & 0xffff, 127),
            r => panic!("{r:?}"),
        }
        enable(&mut c);
        match c.execute_admin(&id) {
            AdminReply::Data(bytes, cqe) => {
                assert_eq!(bytes.len(), 4096);
                assert_eq!(cqe.cid, 7);
                assert_eq!(&bytes[4..7], b"TP1");
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn identify_answers_each_cns_and_refuses_the_rest() {
        let mut c = controller(false);
        enable(&mut c);
        let id = |nsid, cns, len| cmd(admin::IDENTIFY, nsid, cns, 0, len);
        let AdminReply::Data(ns, _) = c.execute_admin(&id(1, cns::NAMESPACE, 4096)) else {
            panic!()
        };
        assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 2048);
        // An inactive id the subsystem may use: zeroes; one it may not: refused.
        let AdminReply::Data(zero, _) = c.execute_admin(&id(5, cns::NAMESPACE, 4096)) else {
            panic!()
        };
        assert!(zero.iter().all(|&b| b == 0));
        assert_eq!(
            status(&c.execute_admin(&id(99, cns::NAMESPACE, 4096))),
            Codes::INVALID_NAMESPACE
        );
        let AdminReply::Data(list, _) = c.execute_admin(&id(0, cns::ACTIVE_NAMESPACES, 4096))
        else {
            panic!()
        };
        assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(status(&c.execute_admin(&id(1, 0x03, 4096))), Codes::SUCCESS);
        assert_eq!(
            status(&c.execute_admin(&id(0, 0x10, 4096))),
            Codes::INVALID_FIELD
        );
        // The data is cut to the host's buffer.
        let AdminReply::Data(short, _) = c.execute_admin(&id(0, cns::CONTROLLER, 1024)) else {
            panic!()
        };
        assert_eq!(short.len(), 1024);
        assert_eq!(
            status(&c.execute_admin(&cmd(0x80, 0, 0, 0, 0))),
            Codes::INVALID_OPCODE
        );
    }

    #[test]
    fn features_grant_queues_and_keep_the_keep_alive_timer() {
        let mut c = controller(false);
        enable(&mut c);
        // Ask 16 submission and completion queues (0-based 15): granted 8.
        let set = cmd(
            admin::SET_FEATURES,
            0,
            feature::NUMBER_OF_QUEUES,
            15 | 15 << 16,
            0,
        );
        match c.execute_admin(&set) {
            AdminReply::Complete(cqe) => assert_eq!(cqe.dw0, 7 | 7 << 16),
            r => panic!("{r:?}"),
        }
        assert_eq!(c.io_queues_granted, 8);
        let kato = cmd(admin::SET_FEATURES, 0, features::KEEP_ALIVE_TIMER, 5000, 0);
        assert_eq!(status(&c.execute_admin(&kato)), Codes::SUCCESS);
        let get = cmd(admin::GET_FEATURES, 0, features::KEEP_ALIVE_TIMER, 0, 0);
        match c.execute_admin(&get) {
            AdminReply::Complete(cqe) => assert_eq!(cqe.dw0, 5000),
            r => panic!("{r:?}"),
        }
        let bad = cmd(admin::SET_FEATURES, 0, 0x7e, 0, 0);
        assert_eq!(status(&c.execute_admin(&bad)), Codes::INVALID_FIELD);
        let bad = cmd(admin::SET_FEATURES, 0, feature::NUMBER_OF_QUEUES, 0xffff, 0);
        assert_eq!(status(&c.execute_admin(&bad)), Codes::INVALID_FIELD);
        assert_eq!(c.io_queues_granted, 8, "a refused request changes nothing");
    }

    #[test]
    fn async_event_requests_are_held_up_to_the_limit() {
        let mut c = controller(false);
        enable(&mut c);
        for _ in 0..MAX_HELD_AERS {
            let aer = cmd(opcode::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
            assert_eq!(c.execute_admin(&aer), AdminReply::Held);
        }
        let aer = cmd(opcode::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
        assert_eq!(status(&c.execute_admin(&aer)), AER_LIMIT_EXCEEDED);
        let ka = cmd(admin::KEEP_ALIVE, 0, 0, 0, 0);
        assert_eq!(status(&c.execute_admin(&ka)), Codes::SUCCESS);
    }

    #[test]
    fn log_pages_honour_length_and_offset_and_the_discovery_log_is_the_discovery_controller_s() {
        let mut c = controller(false);
        enable(&mut c);
        // Health: 512 bytes asked as 128 dwords (NUMDL 127).
        let health = cmd(
            opcode::GET_LOG_PAGE,
            0,
            log::HEALTH as u32 | 127 << 16,
            0,
            512,
        );
        let AdminReply::Data(page, _) = c.execute_admin(&health) else {
            panic!()
        };
        assert_eq!(page.len(), 512);
        let disc = cmd(
            opcode::GET_LOG_PAGE,
            0,
            log::DISCOVERY as u32 | 255 << 16,
            0,
            1024,
        );
        assert_eq!(status(&c.execute_admin(&disc)), Codes::INVALID_FIELD);

        let mut d = controller(true);
        enable(&mut d);
        d.discovery = vec![DiscoveryEntry {
            subsystem_nqn: "nqn.2016-06.io.tidepool:a".into(),
            discovery: false,
            ipv6: false,
            address: "127.0.0.1".into(),
            service: "4420".into(),
            port_id: 1,
        }];
        // The header first (as the Linux host reads it), then the whole page.
        let AdminReply::Data(head, _) = d.execute_admin(&disc) else {
            panic!()
        };
        assert_eq!(head.len(), 1024);
        assert_eq!(u64::from_le_bytes(head[8..16].try_into().unwrap()), 1);
        let mut whole = cmd(
            opcode::GET_LOG_PAGE,
            0,
            log::DISCOVERY as u32 | 511 << 16,
            0,
            2048,
        );
        whole.cdw12 = 0;
        let AdminReply::Data(page, _) = d.execute_admin(&whole) else {
            panic!()
        };
        assert_eq!(
            &page[1024 + 256..1024 + 256 + 25],
            b"nqn.2016-06.io.tidepool:a"
        );
        // An offset past the page, or not dword-aligned, is refused.
        let mut past = whole;
        past.cdw12 = 4096;
        assert_eq!(status(&d.execute_admin(&past)), Codes::INVALID_FIELD);
        past.cdw12 = 2;
        assert_eq!(status(&d.execute_admin(&past)), Codes::INVALID_FIELD);
        let id_ns = cmd(admin::IDENTIFY, 1, cns::NAMESPACE, 0, 4096);
        assert_eq!(status(&d.execute_admin(&id_ns)), Codes::INVALID_NAMESPACE);
    }
}
