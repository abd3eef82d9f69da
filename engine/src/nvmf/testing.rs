//! What the NVMe/TCP tests share (the target's own and the initiator's): a subsystem of one
//! namespace on a bdev, the limits a target serves with, and a directory that finds the
//! subsystem (and answers for the discovery NQN with it).

use super::conn::{IN_CAPSULE_BYTES, MDTS};
use super::connect::{Directory, Limits, SubsystemView};
use super::fabrics::DISCOVERY_NQN;
use super::identify::NamespaceInfo;
use crate::bdev::malloc::{MallocBdev, MallocCreateParams};
use crate::bdev::{BdevId, BdevRegistry};
use std::sync::Arc;

/// A directory of one subsystem.
pub struct Dir(pub SubsystemView);

impl Directory for Dir {
    fn subsystem(&self, nqn: &str) -> Option<SubsystemView> {
        (nqn == self.0.nqn || nqn == DISCOVERY_NQN).then(|| self.0.clone())
    }
}

/// Subsystem `nqn` serving `bdev` (`num_blocks` of `block_size`) as namespace 1, to `hosts`
/// (any host when there are none).
pub fn view(
    nqn: &str,
    serial: &str,
    bdev: BdevId,
    num_blocks: u64,
    block_size: u32,
    hosts: &[&str],
) -> SubsystemView {
    SubsystemView {
        nqn: nqn.into(),
        serial: serial.into(),
        model: "tidepool".into(),
        allow_any_host: hosts.is_empty(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        namespaces: vec![NamespaceInfo {
            nsid: 1,
            num_blocks,
            block_size,
            uuid: [5; 16],
            deallocated_reads_zeroes: true,
        }],
        bdevs: vec![(1, bdev)],
        max_nsid: 32,
        discovery: vec![],
        discovery_generation: 0,
    }
}

/// A target's limits: 128-entry queues, 4 I/O queues, what a connection serves.
pub fn limits() -> Limits {
    Limits {
        max_queue_entries: 128,
        max_io_queues: 4,
        in_capsule_bytes: IN_CAPSULE_BYTES,
        mdts: MDTS,
    }
}

/// A registry holding one malloc bdev `name`; with its id.
pub fn malloc_registry(
    name: &str,
    num_blocks: u64,
    block_size: u32,
) -> (Arc<BdevRegistry>, BdevId) {
    let registry = Arc::new(BdevRegistry::new());
    let malloc = MallocBdev::create(&MallocCreateParams {
        name: Some(name.into()),
        num_blocks,
        block_size,
        uuid: None,
    })
    .expect("a malloc bdev");
    let id = registry.register(Arc::new(malloc)).expect("registered");
    (registry, id)
}
