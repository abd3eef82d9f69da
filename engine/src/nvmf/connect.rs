//! A target's controllers and the Fabrics Connect that makes them (NVMe over Fabrics 1.1,
//! 3.3): a Connect on queue 0 makes a controller in the dynamic model (the target picks its
//! id); a Connect on queue N > 0 joins queue N to the controller the host names.
//!
//! **Contract.** [`Controllers::connect`] checks the Connect the way the specification lists
//! its failures, and a refused Connect changes nothing:
//! - a record format other than 0: Incompatible Format;
//! - a queue size of 0 entries or above the controller's maximum, or a queue id the
//!   controller did not grant (Set Features Number of Queues) or already has: Connect Invalid
//!   Parameters, pointing at the field (IATTR/IPO, see [`ConnectRefusal`]);
//! - on queue 0, a controller id other than FFFFh (only the dynamic model here), and on queue
//!   N, one that does not exist or belongs to another subsystem or host: Connect Invalid
//!   Parameters at the data's CNTLID;
//! - a subsystem NQN nobody serves: Connect Invalid Parameters at the data's SUBNQN;
//! - a host NQN the subsystem does not allow: Connect Invalid Host.
//!
//! The subsystems come from a [`Directory`] (the subsystem registry behind the `nvmf_*`
//! RPCs); each controller keeps the view of its subsystem it was made with. Controllers are
//! shared between their queues (each queue a TCP connection, maybe on another reactor) behind
//! a mutex; the admin path takes it, the I/O path only at connect.

use super::admin::Controller;
use super::fabrics::{
    Codes, ConnectData, ConnectRefusal, Properties, CNTLID_DYNAMIC, DISCOVERY_NQN,
};
use super::identify::{ControllerInfo, DiscoveryEntry, NamespaceInfo};
use crate::bdev::BdevId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Byte offsets of Connect's fields in the submission entry, for IPO.
const SQE_QID_AT: u16 = 42;
const SQE_SQSIZE_AT: u16 = 44;
/// Byte offsets in the Connect data.
const DATA_CNTLID_AT: u16 = 16;
const DATA_SUBNQN_AT: u16 = 256;
/// Controller ids the dynamic model hands out (FFF0h and above are reserved).
const MAX_CNTLID: u16 = 0xffef;

/// What a subsystem offers a connecting host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemView {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub namespaces: Vec<NamespaceInfo>,
    /// The bdev behind each namespace id.
    pub bdevs: Vec<(u32, BdevId)>,
    pub max_nsid: u32,
    /// For the discovery subsystem: the entries of its log page, and their generation.
    pub discovery: Vec<DiscoveryEntry>,
    pub discovery_generation: u64,
}

impl SubsystemView {
    pub fn is_discovery(&self) -> bool {
        self.nqn == DISCOVERY_NQN
    }

    fn allows(&self, host_nqn: &str) -> bool {
        self.is_discovery() || self.allow_any_host || self.hosts.iter().any(|h| h == host_nqn)
    }
}

/// One queue a Connect attached, as the target reports it to its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReport {
    pub subsystem_nqn: String,
    pub cntlid: u16,
    pub qid: u16,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    /// The target's address the host reached.
    pub local: std::net::SocketAddr,
    pub peer: String,
}

/// Where Connect looks subsystems up, and what it tells of the queues it attaches (for
/// listings, and so that a subsystem with hosts connected is not changed under them).
pub trait Directory {
    fn subsystem(&self, nqn: &str) -> Option<SubsystemView>;
    /// A queue connected; on queue 0 its controller is new.
    fn queue_connected(&self, _queue: &QueueReport) {}
    /// A queue's connection ended; on queue 0 its controller ended with it.
    fn queue_disconnected(&self, _subsystem_nqn: &str, _cntlid: u16, _qid: u16) {}
}

/// Limits every controller of this target shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries a queue may have (CAP.MQES + 1).
    pub max_queue_entries: u16,
    pub max_io_queues: u16,
    pub in_capsule_bytes: u32,
    /// MDTS: largest transfer as a power of two of 4 KiB pages.
    pub mdts: u8,
}

/// One controller and what its queues share.
pub struct ControllerSlot {
    pub controller: Controller,
    /// The bdev behind each namespace id (from the subsystem, at the admin Connect).
    pub bdevs: Vec<(u32, BdevId)>,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    /// I/O queues connected, by id (1-based; bit 0 unused).
    io_queues: Vec<bool>,
    /// Set when the controller ends (its admin queue closed, or its keep alive expired):
    /// every queue's connection watches it and ends too.
    pub ended: Arc<AtomicBool>,
}

pub type SharedController = Arc<Mutex<ControllerSlot>>;

/// Locks a controller (a panic elsewhere while it was held stops the process: see the
/// daemon's panic hook, so a poisoned lock is never seen in service).
pub fn lock(c: &SharedController) -> MutexGuard<'_, ControllerSlot> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue a Connect attached.
pub struct Connected {
    pub controller: SharedController,
    pub cntlid: u16,
    pub qid: u16,
    /// Entries of the queue (SQSIZE + 1).
    pub entries: u16,
}

/// Every controller of the target, by id.
pub struct Controllers {
    limits: Limits,
    by_id: Mutex<BTreeMap<u16, SharedController>>,
}

impl Controllers {
    pub fn new(limits: Limits) -> Controllers {
        Controllers {
            limits,
            by_id: Mutex::new(BTreeMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u16, SharedController>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// A Connect for queue `qid` of `sqsize + 1` entries, with `kato_ms` (queue 0 only).
    pub fn connect(
        &self,
        directory: &dyn Directory,
        recfmt: u16,
        qid: u16,
        sqsize: u16,
        kato_ms: u32,
        data: &ConnectData,
    ) -> Result<Connected, ConnectRefusal> {
        if recfmt != 0 {
            return Err(ConnectRefusal::status(Codes::INCOMPATIBLE_FORMAT));
        }
        if sqsize == 0 || sqsize >= self.limits.max_queue_entries {
            return Err(ConnectRefusal::invalid_parameter(false, SQE_SQSIZE_AT));
        }
        let subsystem = directory
            .subsystem(&data.subsystem_nqn)
            .ok_or(ConnectRefusal::invalid_parameter(true, DATA_SUBNQN_AT))?;
        if !subsystem.allows(&data.host_nqn) {
            return Err(ConnectRefusal::status(Codes::CONNECT_INVALID_HOST));
        }
        if qid == 0 {
            return self.new_controller(subsystem, sqsize, kato_ms, data);
        }
        let controller = self
            .table()
            .get(&data.cntlid)
            .cloned()
            .ok_or(ConnectRefusal::invalid_parameter(true, DATA_CNTLID_AT))?;
        let mut slot = lock(&controller);
        if slot.controller.info.subsystem_nqn != data.subsystem_nqn
            || slot.host_nqn != data.host_nqn
        {
            return Err(ConnectRefusal::invalid_parameter(true, DATA_CNTLID_AT));
        }
        let granted = slot.controller.io_queues_granted;
        if qid > granted || slot.io_queues[qid as usize] {
            return Err(ConnectRefusal::invalid_parameter(false, SQE_QID_AT));
        }
        slot.io_queues[qid as usize] = true;
        drop(slot);
        Ok(Connected {
            controller,
            cntlid: data.cntlid,
            qid,
            entries: sqsize + 1,
        })
    }

    fn new_controller(
        &self,
        subsystem: SubsystemView,
        sqsize: u16,
        kato_ms: u32,
        data: &ConnectData,
    ) -> Result<Connected, ConnectRefusal> {
        if data.cntlid != CNTLID_DYNAMIC {
            return Err(ConnectRefusal::invalid_parameter(true, DATA_CNTLID_AT));
        }
        let mut table = self.table();
        let cntlid = (1..=MAX_CNTLID)
            .find(|id| !table.contains_key(id))
            .ok_or(ConnectRefusal::status(Codes::CONTROLLER_BUSY))?;
        let discovery = subsystem.is_discovery();
        let l = self.limits;
        let controller = Controller {
            info: ControllerInfo {
                cntlid,
                serial: subsystem.serial.clone(),
                model: subsystem.model.clone(),
                firmware: env!("CARGO_PKG_VERSION").to_string(),
                subsystem_nqn: subsystem.nqn.clone(),
                discovery,
                max_nsid: subsystem.max_nsid,
                mdts: l.mdts,
                max_commands: l.max_queue_entries,
                in_capsule_bytes: l.in_capsule_bytes,
                keep_alive_100ms: 100,
                volatile_cache: true,
            },
            namespaces: subsystem.namespaces,
            discovery: subsystem.discovery,
            discovery_generation: subsystem.discovery_generation,
            properties: Properties::new(l.max_queue_entries - 1),
            kato_ms,
            io_queues_granted: 0,
            max_io_queues: if discovery { 0 } else { l.max_io_queues },
            async_event_config: 0,
            held_aers: Vec::new(),
        };
        let shared = Arc::new(Mutex::new(ControllerSlot {
            controller,
            bdevs: subsystem.bdevs,
            host_nqn: data.host_nqn.clone(),
            host_id: data.host_id,
            io_queues: vec![false; l.max_io_queues as usize + 1],
            ended: Arc::new(AtomicBool::new(false)),
        }));
        table.insert(cntlid, Arc::clone(&shared));
        Ok(Connected {
            controller: shared,
            cntlid,
            qid: 0,
            entries: sqsize + 1,
        })
    }

    /// Queue `qid` of controller `cntlid` went away (its connection closed). When the admin
    /// queue goes, the controller goes with it, and its I/O queues' connections end
    /// (`ControllerSlot::ended`).
    pub fn disconnect(&self, cntlid: u16, qid: u16) {
        if qid == 0 {
            if let Some(c) = self.table().remove(&cntlid) {
                lock(&c).ended.store(true, Ordering::Release);
            }
            return;
        }
        if let Some(c) = self.table().get(&cntlid) {
            if let Some(q) = lock(c).io_queues.get_mut(qid as usize) {
                *q = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::admin::AdminReply;
    use tidepool_bindings::nvme::spec::{admin, feature, SubmissionEntry};

    struct Table(Vec<SubsystemView>);

    impl Directory for Table {
        fn subsystem(&self, nqn: &str) -> Option<SubsystemView> {
            self.0.iter().find(|s| s.nqn == nqn).cloned()
        }
    }

    const SUB: &str = "nqn.2016-06.io.tidepool:vol0";
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:1";

    fn directory(allow_any_host: bool) -> Table {
        let view = |nqn: &str| SubsystemView {
            nqn: nqn.into(),
            serial: "TP1".into(),
            model: "tidepool".into(),
            allow_any_host,
            hosts: vec![HOST.into()],
            namespaces: vec![],
            bdevs: vec![],
            max_nsid: 32,
            discovery: vec![],
            discovery_generation: 0,
        };
        Table(vec![view(SUB), view(DISCOVERY_NQN)])
    }

    fn limits() -> Limits {
        Limits {
            max_queue_entries: 128,
            max_io_queues: 4,
            in_capsule_bytes: 4096,
            mdts: 5,
        }
    }

    fn data(sub: &str, host: &str, cntlid: u16) -> ConnectData {
        ConnectData {
            host_id: [1; 16],
            cntlid,
            subsystem_nqn: sub.into(),
            host_nqn: host.into(),
        }
    }

    /// Grants `n` I/O queues on controller `c` (enables it and sets Number of Queues).
    fn grant(c: &SharedController, n: u32) {
        let mut slot = lock(c);
        slot.controller.properties.cc = 1;
        let mut set = SubmissionEntry::new(admin::SET_FEATURES, 0);
        set.cdw10 = feature::NUMBER_OF_QUEUES;
        set.cdw11 = (n - 1) | (n - 1) << 16;
        assert!(matches!(
            slot.controller.execute_admin(&set),
            AdminReply::Complete(_)
        ));
    }

    #[test]
    fn an_admin_connect_makes_a_controller_and_io_connects_join_it() {
        let d = directory(false);
        let cs = Controllers::new(limits());
        let admin = cs
            .connect(&d, 0, 0, 31, 15_000, &data(SUB, HOST, CNTLID_DYNAMIC))
            .unwrap();
        assert_eq!((admin.cntlid, admin.qid, admin.entries), (1, 0, 32));
        assert_eq!(lock(&admin.controller).controller.kato_ms, 15_000);
        let second = cs
            .connect(&d, 0, 0, 31, 0, &data(SUB, HOST, CNTLID_DYNAMIC))
            .unwrap();
        assert_eq!(second.cntlid, 2);

        // No I/O queue before Number of Queues grants one.
        let io = |qid| cs.connect(&d, 0, qid, 127, 0, &data(SUB, HOST, 1));
        assert_eq!(io(1).err().unwrap().offset, SQE_QID_AT);
        grant(&admin.controller, 2);
        let q1 = io(1).unwrap();
        assert_eq!((q1.cntlid, q1.qid, q1.entries), (1, 1, 128));
        assert_eq!(io(1).err().unwrap().offset, SQE_QID_AT, "already connected");
        assert_eq!(io(3).err().unwrap().offset, SQE_QID_AT, "not granted");
        cs.disconnect(1, 1);
        assert!(
            io(1).is_ok(),
            "a queue id is free again once its connection ends"
        );
        cs.disconnect(1, 0);
        assert_eq!(cs.count(), 1);
        assert_eq!(
            io(2).err().unwrap().offset,
            DATA_CNTLID_AT,
            "the controller is gone"
        );
    }

    #[test]
    fn every_refusal_says_why_and_changes_nothing() {
        let d = directory(false);
        let cs = Controllers::new(limits());
        let ok = data(SUB, HOST, CNTLID_DYNAMIC);
        let refused = |recfmt, qid, sqsize, data: &ConnectData| {
            cs.connect(&d, recfmt, qid, sqsize, 0, data).err().unwrap()
        };
        assert_eq!(refused(1, 0, 31, &ok).status, Codes::INCOMPATIBLE_FORMAT);
        assert_eq!(refused(0, 0, 0, &ok).offset, SQE_SQSIZE_AT);
        assert_eq!(refused(0, 0, 128, &ok).offset, SQE_SQSIZE_AT);
        let unknown = refused(
            0,
            0,
            31,
            &data("nqn.2016-06.io.tidepool:nope", HOST, 0xffff),
        );
        assert_eq!((unknown.in_data, unknown.offset), (true, DATA_SUBNQN_AT));
        assert_eq!(unknown.dw0(), 1 << 16 | 256);
        let stranger = refused(
            0,
            0,
            31,
            &data(SUB, "nqn.2014-08.org.example:other", 0xffff),
        );
        assert_eq!(stranger.status, Codes::CONNECT_INVALID_HOST);
        let nameless = refused(0, 0, 31, &data(SUB, "", 0xffff));
        assert_eq!(
            nameless.status,
            Codes::CONNECT_INVALID_HOST,
            "no host NQN is on no host list"
        );
        assert_eq!(
            refused(0, 0, 31, &data(SUB, HOST, 5)).offset,
            DATA_CNTLID_AT
        );
        assert_eq!(cs.count(), 0, "no controller was made");

        // The discovery subsystem takes any host; I/O queues of another host's controller
        // are refused.
        let disc = cs
            .connect(&d, 0, 0, 31, 0, &data(DISCOVERY_NQN, "nqn.x:any", 0xffff))
            .unwrap();
        assert!(lock(&disc.controller).controller.info.discovery);
        let admin = cs.connect(&d, 0, 0, 31, 0, &ok).unwrap();
        grant(&admin.controller, 1);
        let other_host = data(SUB, "nqn.2014-08.org.example:other", admin.cntlid);
        let open = directory(true);
        let e = cs.connect(&open, 0, 1, 31, 0, &other_host).err().unwrap();
        assert_eq!(e.offset, DATA_CNTLID_AT);
    }
}
