//! The `nvme` bdev: a userspace NVMe driver over VFIO (PCIe), in SPDK's shape.
//!
//! `bdev_nvme_attach_controller -b NAME -t pcie -a BDF` brings a controller up
//! ([`controller`]) and registers one bdev per active namespace, `NAMEn1`, `NAMEn2`, ….
//! Each reactor's channel on a namespace creates its own I/O queue pair when it opens and
//! deletes it when it closes, submits without a system call, rings the doorbell once per
//! poll step for everything submitted since, and reaps completions by phase tag. No
//! interrupts.
//!
//! Contract, beyond the bdev contract's:
//! - Reads and writes larger than the controller's MDTS are split (in `bindings`' queue
//!   pair); a request completes with its first failing command's NVMe status, as
//!   [`IoStatus::Nvme`], counted per status on the controller.
//! - Flush is sent only where the controller has a volatile write cache (elsewhere there is
//!   nothing to flush and it succeeds at once); Write Zeroes and Deallocate (unmap) are
//!   offered only where ONCS says the controller has them, so the engine's usual fallbacks
//!   apply elsewhere.
//! - A request in flight longer than the command timeout, or a controller fatal status,
//!   resets the controller; every request it held fails with EIO. A controller that is gone
//!   fails every request with ENODEV. Nothing is retried here.

pub mod controller;

use super::{
    Bdev, BdevChannel, BdevError, BdevInfo, Completion, DoneQueue, IoRequest, IoStatus, IoType,
    IoTypeSet,
};
use crate::time::Nanos;
use controller::{Controller, NvmeError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tidepool_bindings::nvme::queue::{Command, QueuePair, Refused, ABORTED_BY_RESET};
use tidepool_bindings::nvme::spec::Status;

/// The product name `bdev_get_bdevs` shows (SPDK's).
pub const PRODUCT_NAME: &str = "NVMe disk";

fn default_io_queue_entries() -> u16 {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// `bdev_nvme_attach_controller` parameters: SPDK's `name`, `trtype`, `traddr`, and
/// tidepool's queue size and command timeout.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    pub name: String,
    /// `PCIe` (any case); `TCP` is the NVMe/TCP initiator, not built yet.
    pub trtype: String,
    /// The PCI address, `dddd:bb:dd.f`.
    pub traddr: String,
    /// Entries of each reactor's I/O queue pair (at most what CAP.MQES allows).
    #[serde(default = "default_io_queue_entries")]
    pub io_queue_entries: u16,
    /// A command with no completion after this long resets the controller.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl AttachParams {
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
        if !self.trtype.eq_ignore_ascii_case("pcie") {
            return Err(BdevError::invalid(
                "trtype",
                format!("'{}' is not supported (only PCIe)", self.trtype),
            ));
        }
        tidepool_bindings::nvme::pci::check_bdf(&self.traddr)
            .map_err(|e| BdevError::invalid("traddr", e.to_string()))?;
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

/// Attaches a controller and makes one bdev per usable active namespace (not registered
/// yet: the caller registers them, all or none).
pub fn attach(p: &AttachParams) -> Result<Vec<NvmeBdev>, BdevError> {
    p.check()?;
    let ctrl = Arc::new(Controller::attach(
        &p.name,
        &p.traddr,
        p.io_queue_entries,
        Duration::from_millis(p.timeout_ms),
    )?);
    if ctrl.namespaces().is_empty() {
        return Err(BdevError::invalid(
            "traddr",
            format!("controller {} has no usable active namespace", p.traddr),
        ));
    }
    let id = ctrl.identity();
    let mut supported = vec![IoType::Read, IoType::Write, IoType::Flush];
    if id.has_write_zeroes() {
        supported.push(IoType::WriteZeroes);
    }
    if id.has_dataset_management() {
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
            ctrl: Arc::clone(&ctrl),
            nsid: ns.nsid,
            saves_attach: ns.nsid == first,
            params: p.clone(),
        })
        .collect())
}

/// One namespace of an attached controller.
pub struct NvmeBdev {
    info: BdevInfo,
    ctrl: Arc<Controller>,
    nsid: u32,
    /// The first namespace's bdev writes the attach entry for the whole controller.
    saves_attach: bool,
    params: AttachParams,
}

impl NvmeBdev {
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }
}

impl Bdev for NvmeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let block_shift = self.info.block_size.trailing_zeros();
        let generation = self.ctrl.generation();
        let qp = self.ctrl.create_io_queue(self.nsid, block_shift)?;
        let slots = qp.entries() as usize;
        Ok(Box::new(NvmeChannel {
            ctrl: Arc::clone(&self.ctrl),
            nsid: self.nsid,
            block_shift,
            flush_has_work: self.ctrl.identity().has_volatile_write_cache(),
            timeout_ns: self.ctrl.command_timeout().as_nanos() as u64,
            qp: Some(qp),
            generation,
            requests: (0..slots).map(|_| None).collect(),
            free: (0..slots as u32).rev().collect(),
            done: DoneQueue::with_capacity(slots),
            next_check_ns: 0,
        }))
    }

    fn driver_specific(&self) -> Value {
        let id = self.ctrl.identity();
        json!({"nvme": [{
            "pci_address": self.ctrl.bdf(),
            "trid": {"trtype": "PCIe", "traddr": self.ctrl.bdf()},
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
        json!({"method": "bdev_nvme_attach_controller", "params": {
            "name": self.params.name, "trtype": "PCIe", "traddr": self.params.traddr,
            "io_queue_entries": self.params.io_queue_entries,
            "timeout_ms": self.params.timeout_ms}})
    }
}

/// How often a channel looks for timed-out commands and a fatal controller status.
const CHECK_INTERVAL_NS: Nanos = 100_000_000;

struct NvmeChannel {
    ctrl: Arc<Controller>,
    nsid: u32,
    block_shift: u32,
    flush_has_work: bool,
    timeout_ns: u64,
    /// None after a reset took the queue, until the next request makes a new one.
    qp: Option<QueuePair>,
    /// The controller's reset generation `qp` belongs to.
    generation: u64,
    /// Requests in flight (their buffers are in the queue pair), by slot, with when they went.
    requests: Vec<Option<(IoRequest, Nanos)>>,
    free: Vec<u32>,
    /// Requests answered without the device (no work, or refused).
    done: DoneQueue,
    next_check_ns: Nanos,
}

impl NvmeChannel {
    /// Fails every request a reset took, and drops the dead queue pair.
    fn catch_up_with_reset(&mut self) {
        let Some(mut qp) = self.qp.take() else {
            self.generation = self.ctrl.generation();
            return;
        };
        if let Some(halted) = self.ctrl.halted_since_reset() {
            let (requests, free, done) = (&mut self.requests, &mut self.free, &mut self.done);
            qp.abandon_all(halted, |c| {
                if let Some((mut io, _)) = requests[c.user_data as usize].take() {
                    free.push(c.user_data as u32);
                    io.buf = c.buf;
                    done.push(io, IoStatus::Failed { errno: libc::EIO });
                }
            });
        } else {
            // Gone without a halt proof: keep the queue (its memory leaks on drop).
            log::error!("nvme {}: queue taken by a failed reset", self.ctrl.name());
        }
        drop(qp);
        self.generation = self.ctrl.generation();
    }

    fn command(&self, io: &IoRequest) -> Option<Command> {
        let (nsid, lba, blocks) = (self.nsid, io.offset_blocks, io.num_blocks);
        Some(match io.io_type {
            IoType::Read => Command::Read { nsid, lba, blocks },
            IoType::Write => Command::Write { nsid, lba, blocks },
            IoType::Flush if self.flush_has_work => Command::Flush { nsid },
            IoType::Flush => return None,
            IoType::WriteZeroes => Command::WriteZeroes { nsid, lba, blocks },
            IoType::Unmap => Command::Deallocate { nsid, lba, blocks },
        })
    }

    fn check_health(&mut self, now: Nanos) {
        if now < self.next_check_ns {
            return;
        }
        self.next_check_ns = now + CHECK_INTERVAL_NS;
        if self.ctrl.check_gone() {
            self.fail_gone();
            return;
        }
        if self.qp.as_ref().is_none_or(|q| q.inflight() == 0) {
            return;
        }
        let oldest = self.requests.iter().flatten().map(|(_, at)| *at).min();
        let reason = if self.ctrl.fatal() {
            Some("controller fatal status (CSTS.CFS)".to_string())
        } else {
            oldest
                .filter(|&at| now.saturating_sub(at) > self.timeout_ns)
                .map(|_| {
                    format!(
                        "a command had no completion within {} ms",
                        self.timeout_ns / 1_000_000
                    )
                })
        };
        if let Some(reason) = reason {
            if let Err(e) = self.ctrl.reset(self.generation, &reason) {
                log::error!("nvme {}: reset failed: {e}", self.ctrl.name());
            }
            self.catch_up_with_reset();
        }
    }

    /// Once the controller is gone: fails everything in flight with ENODEV if the device can
    /// do no more DMA (it reads all ones); a device the kernel merely asked back still
    /// completes what it holds, so its queue stays until that comes back.
    fn fail_gone(&mut self) {
        let Some(halted) = self.ctrl.halted_now() else {
            return;
        };
        if let Some(mut qp) = self.qp.take() {
            let (requests, free, done) = (&mut self.requests, &mut self.free, &mut self.done);
            qp.abandon_all(halted, |c| {
                if let Some((mut io, _)) = requests[c.user_data as usize].take() {
                    free.push(c.user_data as u32);
                    io.buf = c.buf;
                    let errno = libc::ENODEV;
                    done.push(io, IoStatus::Failed { errno });
                }
            });
        }
    }
}

fn io_status(status: Status) -> IoStatus {
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

impl BdevChannel for NvmeChannel {
    fn submit(&mut self, mut io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        self.check_health(now);
        if self.ctrl.is_gone() {
            self.fail_gone();
            self.done.push(
                io,
                IoStatus::Failed {
                    errno: libc::ENODEV,
                },
            );
            return Ok(());
        }
        if self.generation != self.ctrl.generation() {
            self.catch_up_with_reset();
        }
        let Some(cmd) = self.command(&io) else {
            self.done.push(io, IoStatus::Success);
            return Ok(());
        };
        if self.qp.is_none() {
            match self.ctrl.create_io_queue(self.nsid, self.block_shift) {
                Ok(qp) => self.qp = Some(qp),
                Err(e) => {
                    log::error!("nvme {}: no I/O queue: {e}", self.ctrl.name());
                    let errno = if self.ctrl.is_gone() {
                        libc::ENODEV
                    } else {
                        libc::EIO
                    };
                    self.done.push(io, IoStatus::Failed { errno });
                    return Ok(());
                }
            }
        }
        let qp = self.qp.as_mut().expect("made above");
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        match qp.submit(cmd, io.buf.take(), slot as u64) {
            Ok(()) => {
                self.requests[slot as usize] = Some((io, now));
                Ok(())
            }
            Err(Refused::Full(buf)) => {
                self.free.push(slot);
                io.buf = buf;
                Err(io)
            }
            Err(Refused::TooLarge(buf)) => {
                self.free.push(slot);
                io.buf = buf;
                self.done.push(io, IoStatus::Invalid);
                Ok(())
            }
        }
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        if self.generation != self.ctrl.generation() {
            self.catch_up_with_reset();
        }
        let mut n = self.done.drain_into(max, out);
        if let Some(qp) = self.qp.as_mut() {
            // Checked again here: a reset on another reactor may have begun since.
            if self.generation == self.ctrl.generation() {
                qp.ring();
            }
            let (requests, free, ctrl) = (&mut self.requests, &mut self.free, &self.ctrl);
            n += qp.reap(max - n, |c| {
                let (mut io, _) = requests[c.user_data as usize]
                    .take()
                    .expect("a completion for a request in flight");
                free.push(c.user_data as u32);
                io.buf = c.buf;
                if !c.status.is_success() {
                    ctrl.count_error(c.status);
                }
                out.push(Completion::new(io, io_status(c.status)));
            });
        }
        self.check_health(now);
        n
    }

    fn inflight(&self) -> usize {
        self.done.len() + self.qp.as_ref().map_or(0, |q| q.inflight())
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        if let Some(qp) = self.qp.take() {
            self.ctrl.delete_io_queue(qp, self.generation);
        }
    }
}
