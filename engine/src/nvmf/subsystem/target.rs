//! The registry seen from the protocol side: [`Subsystems`] is the target's
//! [`Directory`] (what a Fabrics Connect and the admin queue look up), the [`NvmfTarget`] is
//! the registry's [`ListenerBinder`] (the registry opens an address once, with its first
//! listener in any subsystem, and closes it with its last), and [`TransportOptions::limits`]
//! gives the controllers' [`Limits`].
//!
//! Wiring them makes a cycle (the target holds the directory, the registry holds the
//! binder): [`Subsystems::clear_binder`] breaks it at shutdown.

use super::{ListenAddress, ListenerBinder, Subsystems, Subtype, TransportOptions};
use crate::bdev::IoType;
use crate::nvmf::connect::{Directory, Limits, QueueReport, SubsystemView as ConnectView};
use crate::nvmf::identify::{DiscoveryEntry, NamespaceInfo};
use crate::nvmf::target::NvmfTarget;

/// A checked UUID's 16 bytes (the registry stores only checked ones).
fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let hex: Vec<u8> = uuid.bytes().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
        out[i] = u8::from_str_radix(text, 16).expect("a checked uuid is hex");
    }
    out
}

impl Directory for Subsystems {
    fn subsystem(&self, nqn: &str) -> Option<ConnectView> {
        let state = self.read();
        let s = &state.find(nqn).ok()?.view;
        let discovery = if s.subtype == Subtype::Discovery {
            // Every NVM subsystem at every address it listens on; PORTID numbers the
            // addresses the target listens on.
            let mut ports: Vec<&ListenAddress> = Vec::new();
            let mut entries = Vec::new();
            for nvm in state
                .subsystems
                .iter()
                .filter(|x| x.view.subtype == Subtype::Nvme)
            {
                for l in &nvm.view.listeners {
                    let port_id = match ports.iter().position(|p| *p == l) {
                        Some(i) => i,
                        None => {
                            ports.push(l);
                            ports.len() - 1
                        }
                    };
                    entries.push(DiscoveryEntry {
                        subsystem_nqn: nvm.view.nqn.clone(),
                        discovery: false,
                        ipv6: l.adrfam == "IPv6",
                        address: l.traddr.clone(),
                        service: l.trsvcid.clone(),
                        port_id: port_id as u16,
                    });
                }
            }
            entries
        } else {
            Vec::new()
        };
        Some(ConnectView {
            nqn: s.nqn.clone(),
            serial: s.serial_number.clone(),
            model: s.model_number.clone(),
            allow_any_host: s.allow_any_host,
            hosts: s.hosts.clone(),
            namespaces: s
                .namespaces
                .iter()
                .map(|n| NamespaceInfo {
                    nsid: n.nsid,
                    num_blocks: n.num_blocks,
                    block_size: n.block_size,
                    uuid: uuid_bytes(&n.uuid),
                    deallocated_reads_zeroes: n.supported.contains(IoType::Unmap),
                })
                .collect(),
            bdevs: s.namespaces.iter().map(|n| (n.nsid, n.bdev)).collect(),
            max_nsid: s.max_namespaces,
            discovery,
            discovery_generation: state.generation,
        })
    }

    fn queue_connected(&self, q: &QueueReport) {
        if q.qid == 0 {
            let host_id: String = q.host_id.iter().map(|b| format!("{b:02x}")).collect();
            self.record_controller(&q.subsystem_nqn, q.cntlid, &q.host_nqn, &host_id);
        }
        let listen_address = ListenAddress {
            trtype: "TCP".into(),
            adrfam: if q.local.is_ipv6() { "IPv6" } else { "IPv4" }.into(),
            traddr: q.local.ip().to_string(),
            trsvcid: q.local.port().to_string(),
        };
        let qpair = super::QpairInfo {
            cntlid: q.cntlid,
            qid: q.qid,
            listen_address,
            peer_address: q.peer.clone(),
        };
        if let Err(e) = self.add_qpair(&q.subsystem_nqn, qpair) {
            log::warn!(
                "nvmf: queue {} of controller {} not listed: {e}",
                q.qid,
                q.cntlid
            );
        }
    }

    fn queue_disconnected(&self, nqn: &str, cntlid: u16, qid: u16) {
        if qid == 0 {
            self.disconnect_controller(nqn, cntlid);
        } else {
            self.remove_qpair(nqn, cntlid, qid);
        }
    }
}

impl ListenerBinder for NvmfTarget {
    fn listen(&self, address: &ListenAddress) -> Result<(), String> {
        NvmfTarget::listen(self, &address.socket_address())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn stop_listening(&self, address: &ListenAddress) {
        if let Ok(a) = address.socket_address().parse() {
            NvmfTarget::stop_listening(self, a);
        }
    }
}

impl TransportOptions {
    /// The controllers' limits under these options: queue entries, I/O queues, in-capsule
    /// bytes, and MDTS (the largest transfer, `max_io_size`, as a power of two of 4 KiB).
    pub fn limits(&self) -> Limits {
        let pages = (self.max_io_size / 4096).max(1);
        Limits {
            max_queue_entries: self.max_queue_depth.min(u32::from(u16::MAX)) as u16,
            max_io_queues: self.max_io_qpairs_per_ctrlr.min(u32::from(u16::MAX)) as u16,
            in_capsule_bytes: self.in_capsule_data_size,
            mdts: pages.ilog2() as u8,
        }
    }
}

impl Subsystems {
    /// Takes the binder out, closing every address it opened: at shutdown, or to break the
    /// target ↔ registry cycle.
    pub fn clear_binder(&self) {
        let binder = self
            .binder
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(binder) = binder {
            for a in self.listen_addresses() {
                binder.stop_listening(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::BdevRegistry;
    use crate::reactor::{Engine, EngineConfig};
    use crate::rpc::methods::nvmf::call;
    use serde_json::json;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

    fn ok(nvmf: &Subsystems, method: &str, params: serde_json::Value) -> serde_json::Value {
        call(nvmf, method, Some(params.clone()))
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    #[test]
    fn uuids_become_their_sixteen_bytes() {
        let b = uuid_bytes("00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(
            b,
            [
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
    }

    #[test]
    fn the_transport_options_give_the_controllers_limits() {
        let t = TransportOptions {
            trtype: "TCP".into(),
            ..TransportOptions::default()
        };
        let l = t.limits();
        assert_eq!(
            (
                l.max_queue_entries,
                l.max_io_queues,
                l.in_capsule_bytes,
                l.mdts
            ),
            (128, 127, 4096, 5),
            "128 KiB is 2^5 pages of 4 KiB"
        );
    }

    /// The registry drives a real target: the directory the target's Connect reads, and the
    /// port that opens with a listener and closes with it.
    #[test]
    fn the_registry_is_the_targets_directory_and_opens_its_ports() {
        let registry = Arc::new(BdevRegistry::new());
        let malloc = json!({"name": "M0", "num_blocks": 256, "block_size": 512,
            "uuid": "00112233-4455-6677-8899-aabbccddeeff"});
        crate::config::create_bdev(&registry, "bdev_malloc_create", malloc).unwrap();
        let mut config = EngineConfig::new(vec![0]);
        config.pin = false;
        let engine = Arc::new(Engine::start(config, Arc::clone(&registry)).unwrap());
        let nvmf = Arc::new(Subsystems::new(Arc::clone(&registry)));
        ok(&nvmf, "nvmf_create_transport", json!({"trtype": "TCP"}));
        let limits = nvmf.transport().unwrap().limits();
        let target = Arc::new(NvmfTarget::new(engine, nvmf.clone(), limits).unwrap());
        nvmf.set_binder(target.clone()).unwrap();

        ok(
            &nvmf,
            "nvmf_create_subsystem",
            json!({"nqn": NQN, "serial_number": "SN9"}),
        );
        ok(
            &nvmf,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}}),
        );
        // A free port: bound and let go (another process could take it in between; then the
        // add fails with the bind error, loudly).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": port.to_string()});
        ok(
            &nvmf,
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address}),
        );
        TcpStream::connect(("127.0.0.1", port)).expect("the listener's port is open");

        let view = Directory::subsystem(&*nvmf, NQN).unwrap();
        assert_eq!((view.serial.as_str(), view.max_nsid), ("SN9", 32));
        assert_eq!(view.bdevs, [(1, registry.lookup("M0").unwrap().0)]);
        assert_eq!(
            view.namespaces[0].uuid,
            uuid_bytes("00112233-4455-6677-8899-aabbccddeeff")
        );
        assert_eq!(
            (view.namespaces[0].num_blocks, view.namespaces[0].block_size),
            (256, 512)
        );
        let discovery = Directory::subsystem(&*nvmf, super::super::DISCOVERY_NQN).unwrap();
        assert!(discovery.is_discovery());
        assert_eq!(discovery.discovery.len(), 1);
        assert_eq!(discovery.discovery[0].subsystem_nqn, NQN);
        assert_eq!(discovery.discovery[0].service, port.to_string());
        assert!(Directory::subsystem(&*nvmf, "nqn.2016-06.io.spdk:none").is_none());

        ok(
            &nvmf,
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": address}),
        );
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the port closed with its last listener"
        );
        nvmf.clear_binder();
        drop(target);
    }
}
