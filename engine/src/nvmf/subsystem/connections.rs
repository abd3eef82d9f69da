//! The controllers and queue pairs connected to each subsystem, as the protocol code reports
//! them (`nvmf::connect::Directory::queue_connected` / `queue_disconnected`): what
//! `nvmf_subsystem_get_controllers` / `_get_qpairs` list, and what keeps a subsystem from
//! being changed under a connected host.

use super::{ControllerInfo, NvmfError, QpairInfo, Subsystems, MAX_CNTLID, MAX_CONTROLLERS};

impl Subsystems {
    /// Records a new controller of `hostnqn` on `nqn` after checking that the host may
    /// connect and the subsystem has room; returns its controller ID, the lowest free one.
    pub fn connect_controller(
        &self,
        nqn: &str,
        hostnqn: &str,
        hostid: &str,
    ) -> Result<u16, NvmfError> {
        let mut state = self.write();
        let s = state.find_mut(nqn)?;
        if !s.view.host_allowed(hostnqn) {
            return Err(NvmfError::HostNotAllowed {
                nqn: nqn.into(),
                host: hostnqn.into(),
            });
        }
        if s.controllers.len() >= MAX_CONTROLLERS {
            return Err(NvmfError::Limit(format!(
                "'{nqn}' has {MAX_CONTROLLERS} controllers connected, the most it may have"
            )));
        }
        let cntlid = (1..=MAX_CNTLID)
            .find(|id| !s.controllers.iter().any(|c| c.cntlid == *id))
            .expect("fewer controllers than controller IDs");
        drop(state);
        self.record_controller(nqn, cntlid, hostnqn, hostid);
        Ok(cntlid)
    }

    /// Records a controller the target made (with the id the target gave it).
    pub fn record_controller(&self, nqn: &str, cntlid: u16, hostnqn: &str, hostid: &str) {
        let mut state = self.write();
        if let Ok(s) = state.find_mut(nqn) {
            s.controllers.retain(|c| c.cntlid != cntlid);
            s.qpairs.retain(|q| q.cntlid != cntlid);
            s.controllers.push(ControllerInfo {
                cntlid,
                hostnqn: hostnqn.into(),
                hostid: hostid.into(),
            });
        }
    }

    /// Forgets a controller and its queue pairs.
    pub fn disconnect_controller(&self, nqn: &str, cntlid: u16) {
        let mut state = self.write();
        if let Ok(s) = state.find_mut(nqn) {
            s.controllers.retain(|c| c.cntlid != cntlid);
            s.qpairs.retain(|q| q.cntlid != cntlid);
        }
    }

    /// Records a queue pair of a connected controller; qid 0 is the admin queue, I/O queues
    /// are 1 to the transport's `max_io_qpairs_per_ctrlr`.
    pub fn add_qpair(&self, nqn: &str, qpair: QpairInfo) -> Result<(), NvmfError> {
        let mut state = self.write();
        let max = state
            .transport
            .as_ref()
            .map(|t| t.max_io_qpairs_per_ctrlr)
            .ok_or_else(|| NvmfError::NoTransport("TCP".into()))?;
        let s = state.find_mut(nqn)?;
        if !s.controllers.iter().any(|c| c.cntlid == qpair.cntlid) {
            return Err(NvmfError::NotFound(format!(
                "controller {} in '{nqn}'",
                qpair.cntlid
            )));
        }
        if u32::from(qpair.qid) > max {
            return Err(NvmfError::Limit(format!(
                "qid {} is above max_io_qpairs_per_ctrlr {max}",
                qpair.qid
            )));
        }
        if s.qpairs
            .iter()
            .any(|q| q.cntlid == qpair.cntlid && q.qid == qpair.qid)
        {
            return Err(NvmfError::Exists(format!(
                "queue {} of controller {}",
                qpair.qid, qpair.cntlid
            )));
        }
        s.qpairs.push(qpair);
        Ok(())
    }

    pub fn remove_qpair(&self, nqn: &str, cntlid: u16, qid: u16) {
        let mut state = self.write();
        if let Ok(s) = state.find_mut(nqn) {
            s.qpairs.retain(|q| !(q.cntlid == cntlid && q.qid == qid));
        }
    }

    pub fn controllers(&self, nqn: &str) -> Result<Vec<ControllerInfo>, NvmfError> {
        Ok(self.read().find(nqn)?.controllers.clone())
    }

    pub fn qpairs(&self, nqn: &str) -> Result<Vec<QpairInfo>, NvmfError> {
        Ok(self.read().find(nqn)?.qpairs.clone())
    }
}
