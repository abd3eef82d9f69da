//! The `nvme` bdev in SPDK's shape: one module, two transports, the same NVMe commands and
//! statuses (`tidepool_bindings::nvme::spec`).
//!
//! `bdev_nvme_attach_controller -b NAME -t TRTYPE ...` brings a controller up and registers one
//! bdev per usable active namespace, `NAMEn1`, `NAMEn2`, …:
//! - `-t pcie -a BDF`: a userspace driver over VFIO ([`controller`], [`pcie`]). Each
//!   reactor's channel creates its own I/O queue pair when it opens, submits without a system
//!   call and reaps completions by phase tag. No interrupts.
//! - `-t tcp -a ADDR -s PORT -n NQN`: an NVMe/TCP host ([`tcp`]). Each reactor's channel has
//!   its own I/O queue, a TCP connection; the controller reconnects as SPDK's
//!   `ctrlr_loss_timeout_sec`, `reconnect_delay_sec` and `fast_io_fail_timeout_sec` say.
//!
//! Contract, beyond the bdev contract's:
//! - Reads and writes larger than the controller's MDTS are split; a request completes with
//!   its first failing command's NVMe status, as [`IoStatus::Nvme`].
//! - Flush is sent only where the controller has a volatile write cache (elsewhere there is
//!   nothing to flush and it succeeds at once); Write Zeroes and Deallocate (unmap) are
//!   offered only where ONCS says the controller has them, so the engine's usual fallbacks
//!   apply elsewhere.
//! - PCIe: a request in flight longer than the command timeout, or a controller fatal status,
//!   resets the controller; every request it held fails with EIO, and a controller that is
//!   gone fails every request with ENODEV. Nothing is retried.
//! - TCP: a failed queue's requests are sent again once the controller is back; they fail
//!   with EIO past the fast-fail time and with ENODEV once the controller is lost.

pub mod controller;
pub mod pcie;
pub mod tcp;

use super::{Bdev, BdevChannel, BdevError, BdevInfo, IoStatus, IoType, IoTypeSet};
pub use controller::Namespace;
use controller::{Controller, NvmeError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tcp::link::{Endpoint, TcpError};
use tcp::{ReconnectOptions, Settings, TcpController};
use tidepool_bindings::nvme::queue::ABORTED_BY_RESET;
use tidepool_bindings::nvme::spec::{IdentifyController, Status};

/// The product name `bdev_get_bdevs` shows (SPDK's).
pub const PRODUCT_NAME: &str = "NVMe disk";

fn default_io_queue_entries() -> u16 {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_keep_alive_timeout_ms() -> u32 {
    10_000
}

/// `bdev_nvme_attach_controller` parameters: SPDK's names (`name`, `trtype`, `traddr`,
/// `adrfam`, `trsvcid`, `subnqn`, `hostnqn`, `hdgst`, `ddgst`, and the reconnect options),
/// and tidepool's queue size and command timeout.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    pub name: String,
    /// `PCIe` or `TCP` (any case).
    pub trtype: String,
    /// PCIe: the PCI address, `dddd:bb:dd.f`. TCP: the controller's IP address.
    pub traddr: String,
    /// TCP: `IPv4` or `IPv6` (checked against `traddr`).
    #[serde(default)]
    pub adrfam: Option<String>,
    /// TCP: the port.
    #[serde(default)]
    pub trsvcid: Option<String>,
    /// TCP: the subsystem's NQN.
    #[serde(default)]
    pub subnqn: Option<String>,
    /// TCP: the host NQN to connect as (default: one made from a new UUID).
    #[serde(default)]
    pub hostnqn: Option<String>,
    /// TCP: header and data digests (CRC-32C).
    #[serde(default)]
    pub hdgst: bool,
    #[serde(default)]
    pub ddgst: bool,
    /// TCP: SPDK's reconnect options (see `tcp::ReconnectOptions`).
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: i64,
    #[serde(default)]
    pub reconnect_delay_sec: u64,
    #[serde(default)]
    pub fast_io_fail_timeout_sec: u64,
    /// TCP: the admin queue's Keep Alive Timeout (Keep Alive goes every half of it).
    #[serde(default = "default_keep_alive_timeout_ms")]
    pub keep_alive_timeout_ms: u32,
    /// Entries of each reactor's I/O queue pair (at most what the controller allows).
    #[serde(default = "default_io_queue_entries")]
    pub io_queue_entries: u16,
    /// A command with no completion after this long resets the controller (PCIe) or fails
    /// its queue (TCP).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Which transport an attach is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trtype {
    Pcie,
    Tcp,
}

impl AttachParams {
    pub fn trtype(&self) -> Result<Trtype, BdevError> {
        if self.trtype.eq_ignore_ascii_case("pcie") {
            Ok(Trtype::Pcie)
        } else if self.trtype.eq_ignore_ascii_case("tcp") {
            Ok(Trtype::Tcp)
        } else {
            Err(BdevError::invalid(
                "trtype",
                format!("'{}' is not supported (PCIe or TCP)", self.trtype),
            ))
        }
    }

    fn reconnect(&self) -> ReconnectOptions {
        ReconnectOptions {
            ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: self.reconnect_delay_sec,
            fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec,
        }
    }

    /// The NVMe/TCP controller's socket address.
    fn socket_addr(&self) -> Result<SocketAddr, BdevError> {
        let ip: IpAddr = self.traddr.parse().map_err(|_| {
            BdevError::invalid("traddr", format!("'{}' is not an IP address", self.traddr))
        })?;
        if let Some(fam) = &self.adrfam {
            let ok = (fam.eq_ignore_ascii_case("ipv4") && ip.is_ipv4())
                || (fam.eq_ignore_ascii_case("ipv6") && ip.is_ipv6());
            if !ok {
                return Err(BdevError::invalid(
                    "adrfam",
                    format!("'{fam}' does not match traddr {ip} (IPv4 or IPv6)"),
                ));
            }
        }
        let port = self
            .trsvcid
            .as_deref()
            .ok_or_else(|| BdevError::invalid("trsvcid", "is required for TCP"))?;
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(SocketAddr::new(ip, p)),
            _ => Err(BdevError::invalid(
                "trsvcid",
                format!("'{port}' is not a port (1-65535)"),
            )),
        }
    }

    /// Where the controller is, as duplicate attaches are told apart: the PCI address, or
    /// the socket address and subsystem.
    pub fn address(&self) -> String {
        match (self.trtype(), self.socket_addr()) {
            (Ok(Trtype::Tcp), Ok(addr)) => {
                format!("{addr} {}", self.subnqn.as_deref().unwrap_or(""))
            }
            _ => self.traddr.clone(),
        }
    }

    pub fn check(&self) -> Result<(), BdevError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(BdevError::invalid(
                "name",
                format!("'{}' must be letters, digits, '_' or '-'", self.name),
            ));
        }
        match self.trtype()? {
            Trtype::Pcie => {
                tidepool_bindings::nvme::pci::check_bdf(&self.traddr)
                    .map_err(|e| BdevError::invalid("traddr", e.to_string()))?;
                let tcp_only = [
                    ("adrfam", self.adrfam.is_some()),
                    ("trsvcid", self.trsvcid.is_some()),
                    ("subnqn", self.subnqn.is_some()),
                    ("hostnqn", self.hostnqn.is_some()),
                    ("hdgst", self.hdgst),
                    ("ddgst", self.ddgst),
                    (
                        "ctrlr_loss_timeout_sec",
                        self.reconnect() != ReconnectOptions::NONE,
                    ),
                ];
                if let Some((param, _)) = tcp_only.iter().find(|(_, set)| *set) {
                    return Err(BdevError::invalid(param, "is for trtype TCP only"));
                }
            }
            Trtype::Tcp => {
                self.socket_addr()?;
                let subnqn = self
                    .subnqn
                    .as_deref()
                    .ok_or_else(|| BdevError::invalid("subnqn", "is required for TCP"))?;
                check_nqn("subnqn", subnqn)?;
                if let Some(h) = &self.hostnqn {
                    check_nqn("hostnqn", h)?;
                }
                self.reconnect().check()?;
                if self.keep_alive_timeout_ms != 0 && self.keep_alive_timeout_ms < 1000 {
                    return Err(BdevError::invalid(
                        "keep_alive_timeout_ms",
                        "must be 0 (none) or at least 1000",
                    ));
                }
            }
        }
        if !(2..=4096).contains(&self.io_queue_entries) {
            return Err(BdevError::invalid(
                "io_queue_entries",
                "must be from 2 to 4096",
            ));
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            return Err(BdevError::invalid(
                "timeout_ms",
                "must be from 1 to 600000 (10 minutes)",
            ));
        }
        Ok(())
    }
}

/// An NQN as the base specification writes them (the target's own check).
fn check_nqn(param: &'static str, nqn: &str) -> Result<(), BdevError> {
    crate::nvmf::subsystem::check_nqn(param, nqn)
        .map_err(|e| BdevError::invalid(param, e.to_string()))
}

impl From<NvmeError> for BdevError {
    /// A device that is not there, or not handed to VFIO, is a wrong `traddr` (the caller can
    /// fix it); anything the controller itself did is an I/O error.
    fn from(e: NvmeError) -> BdevError {
        use tidepool_bindings::nvme::pci::PciError;
        match e {
            NvmeError::Pci(
                p @ (PciError::BadAddress(_)
                | PciError::NoSuchDevice(_)
                | PciError::NotBoundToVfio { .. }
                | PciError::NoIommuGroup(_)),
            ) => BdevError::invalid("traddr", p.to_string()),
            other => BdevError::Os {
                context: "bdev_nvme_attach_controller".into(),
                reason: other.to_string(),
            },
        }
    }
}

impl From<TcpError> for BdevError {
    fn from(e: TcpError) -> BdevError {
        BdevError::Os {
            context: "bdev_nvme_attach_controller".into(),
            reason: e.to_string(),
        }
    }
}

/// The attached controller behind a namespace's bdev.
pub enum Transport {
    Pcie(Arc<Controller>),
    Tcp(Arc<TcpAttachment>),
}

/// An NVMe/TCP controller as its bdevs hold it: when the last of them goes (detach), the
/// controller is detached, so that its channels fail what they hold and close, whatever
/// the reconnect options. (Channels hold the controller itself.)
pub struct TcpAttachment(pub Arc<TcpController>);

impl std::ops::Deref for TcpAttachment {
    type Target = TcpController;
    fn deref(&self) -> &TcpController {
        &self.0
    }
}

impl Drop for TcpAttachment {
    fn drop(&mut self) {
        self.0.detach();
    }
}

impl Transport {
    pub fn name(&self) -> &str {
        match self {
            Transport::Pcie(c) => c.name(),
            Transport::Tcp(c) => c.name(),
        }
    }
    /// As [`AttachParams::address`] gives it.
    pub fn address(&self) -> String {
        match self {
            Transport::Pcie(c) => c.bdf().to_string(),
            Transport::Tcp(c) => c.address(),
        }
    }
    /// `bdev_nvme_get_controllers`' entry.
    pub fn report(&self) -> Value {
        match self {
            Transport::Pcie(c) => c.report(),
            Transport::Tcp(c) => c.report(),
        }
    }
    fn identity(&self) -> &IdentifyController {
        match self {
            Transport::Pcie(c) => c.identity(),
            Transport::Tcp(c) => c.identity(),
        }
    }
    fn namespaces(&self) -> &[Namespace] {
        match self {
            Transport::Pcie(c) => c.namespaces(),
            Transport::Tcp(c) => c.namespaces(),
        }
    }
    fn share(&self) -> Transport {
        match self {
            Transport::Pcie(c) => Transport::Pcie(Arc::clone(c)),
            Transport::Tcp(c) => Transport::Tcp(Arc::clone(c)),
        }
    }
}

/// A random host NQN, as SPDK and nvme-cli make one.
fn new_hostnqn() -> String {
    format!("nqn.2014-08.org.nvmexpress:uuid:{}", super::new_uuid())
}

fn connect_tcp(p: &AttachParams) -> Result<TcpController, BdevError> {
    let hostnqn = p.hostnqn.clone().unwrap_or_else(new_hostnqn);
    let mut host_id = [0u8; 16];
    let hex: String = super::new_uuid().chars().filter(|c| *c != '-').collect();
    for (i, b) in host_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    let settings = Settings {
        endpoint: Endpoint {
            addr: p.socket_addr()?,
            subnqn: p.subnqn.clone().unwrap_or_default(),
            hostnqn,
            host_id,
            digests: crate::nvmf::pdu::Digests {
                header: p.hdgst,
                data: p.ddgst,
            },
            timeout: Duration::from_millis(p.timeout_ms.min(10_000)),
        },
        io_queue_entries: p.io_queue_entries,
        kato_ms: p.keep_alive_timeout_ms,
        reconnect: p.reconnect(),
    };
    Ok(TcpController::attach(&p.name, settings)?)
}

/// Attaches a controller and makes one bdev per usable active namespace (not registered
/// yet: the caller registers them, all or none).
pub fn attach(p: &AttachParams) -> Result<Vec<NvmeBdev>, BdevError> {
    p.check()?;
    let ctrl = match p.trtype()? {
        Trtype::Pcie => Transport::Pcie(Arc::new(Controller::attach(
            &p.name,
            &p.traddr,
            p.io_queue_entries,
            Duration::from_millis(p.timeout_ms),
        )?)),
        Trtype::Tcp => Transport::Tcp(Arc::new(TcpAttachment(Arc::new(connect_tcp(p)?)))),
    };
    if ctrl.namespaces().is_empty() {
        return Err(BdevError::invalid(
            "traddr",
            format!("controller {} has no usable active namespace", p.address()),
        ));
    }
    let id = ctrl.identity();
    let mut supported = vec![IoType::Read, IoType::Write, IoType::Flush];
    if id.has_write_zeroes() {
        supported.push(IoType::WriteZeroes);
    }
    // Deallocate's range list goes in the capsule on NVMe/TCP: offered only where it fits.
    let ranges_fit = match &ctrl {
        Transport::Pcie(_) => true,
        Transport::Tcp(_) => id.in_capsule_bytes() >= 16,
    };
    if id.has_dataset_management() && ranges_fit {
        supported.push(IoType::Unmap);
    }
    let first = ctrl.namespaces()[0].nsid;
    Ok(ctrl
        .namespaces()
        .iter()
        .map(|ns| NvmeBdev {
            info: BdevInfo {
                name: format!("{}n{}", p.name, ns.nsid),
                product_name: PRODUCT_NAME,
                block_size: ns.block_size,
                num_blocks: ns.num_blocks,
                uuid: super::new_uuid(),
                supported: IoTypeSet::of(&supported),
            },
            ctrl: ctrl.share(),
            nsid: ns.nsid,
            saves_attach: ns.nsid == first,
            params: p.clone(),
        })
        .collect())
}

/// One namespace of an attached controller.
pub struct NvmeBdev {
    info: BdevInfo,
    ctrl: Transport,
    nsid: u32,
    /// The first namespace's bdev writes the attach entry for the whole controller.
    saves_attach: bool,
    params: AttachParams,
}

impl NvmeBdev {
    pub fn controller(&self) -> &Transport {
        &self.ctrl
    }
}

impl Bdev for NvmeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(match &self.ctrl {
            Transport::Pcie(c) => {
                Box::new(pcie::NvmeChannel::open(c, self.nsid, self.info.block_size)?)
            }
            Transport::Tcp(c) => Box::new(tcp::channel::TcpChannel::new(
                Arc::clone(&c.0),
                self.nsid,
                self.info.block_size,
                self.params.timeout_ms * 1_000_000,
            )),
        })
    }

    fn driver_specific(&self) -> Value {
        let id = self.ctrl.identity();
        let trid = match &self.ctrl {
            Transport::Pcie(c) => json!({"trtype": "PCIe", "traddr": c.bdf()}),
            Transport::Tcp(c) => {
                let ep = &c.settings().endpoint;
                json!({"trtype": "TCP", "adrfam": if ep.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                    "traddr": ep.addr.ip().to_string(), "trsvcid": ep.addr.port().to_string(),
                    "subnqn": ep.subnqn})
            }
        };
        let pci_address = match &self.ctrl {
            Transport::Pcie(c) => json!(c.bdf()),
            Transport::Tcp(_) => Value::Null,
        };
        json!({"nvme": [{
            "pci_address": pci_address,
            "trid": trid,
            "ctrlr_data": {"model_number": id.model, "serial_number": id.serial,
                "firmware_revision": id.firmware, "vendor_id": format!("{:#06x}", id.vid),
                "cntlid": id.cntlid, "mdts": id.mdts},
            "ns_data": {"id": self.nsid},
            "controller": self.ctrl.name(),
        }]})
    }

    fn config_entry(&self) -> Value {
        if !self.saves_attach {
            return Value::Null;
        }
        let p = &self.params;
        match &self.ctrl {
            Transport::Pcie(_) => json!({"method": "bdev_nvme_attach_controller", "params": {
                "name": p.name, "trtype": "PCIe", "traddr": p.traddr,
                "io_queue_entries": p.io_queue_entries, "timeout_ms": p.timeout_ms}}),
            Transport::Tcp(c) => json!({"method": "bdev_nvme_attach_controller", "params": {
                "name": p.name, "trtype": "TCP",
                "adrfam": if c.settings().endpoint.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                "traddr": p.traddr, "trsvcid": p.trsvcid, "subnqn": p.subnqn,
                "hostnqn": c.settings().endpoint.hostnqn, "hdgst": p.hdgst, "ddgst": p.ddgst,
                "ctrlr_loss_timeout_sec": p.ctrlr_loss_timeout_sec,
                "reconnect_delay_sec": p.reconnect_delay_sec,
                "fast_io_fail_timeout_sec": p.fast_io_fail_timeout_sec,
                "keep_alive_timeout_ms": p.keep_alive_timeout_ms,
                "io_queue_entries": p.io_queue_entries, "timeout_ms": p.timeout_ms}}),
        }
    }
}

/// A command's NVMe status as the bdev layer reports it.
pub(crate) fn io_status(status: Status) -> IoStatus {
    if status.is_success() {
        IoStatus::Success
    } else if status == ABORTED_BY_RESET {
        IoStatus::Failed { errno: libc::EIO }
    } else {
        IoStatus::Nvme {
            sct: status.sct(),
            sc: status.sc(),
        }
    }
}
