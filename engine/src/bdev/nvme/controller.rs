//! One NVMe controller driven from userspace through VFIO: bring-up, namespaces, I/O queue
//! pairs for the reactors' channels, resets, and what `bdev_nvme_get_controllers` reports.
//!
//! Contract:
//! - [`Controller::attach`] follows the NVMe Base Specification's initialisation (3.5.1):
//!   disable and wait for CSTS.RDY to clear within CAP.TO, set up the admin queue, enable and
//!   wait for CSTS.RDY within CAP.TO, Identify the controller and every active namespace, and
//!   ask for I/O queues with Set Features, Number of Queues. Any failure leaves the
//!   controller disabled and returns a typed error.
//! - The admin queue is shared, behind one lock, and used only off the I/O path: creating and
//!   deleting a reactor's queue pair (when its channel opens and closes) and resets.
//! - A reset ([`Controller::reset`]) disables the controller, which takes every I/O queue with
//!   it. Each reset bumps [`Controller::generation`]; a channel that sees a new generation
//!   hands back everything it had in flight as failed (the halted controller is the proof
//!   that no DMA is left) and creates a new queue pair for its next request. Nothing is retried
//!   by the driver: the engine's callers decide.
//! - A controller whose registers read all ones is gone (surprise removal): it is marked so
//!   and every request fails with ENODEV; detaching it still works.
//! - Dropping the controller (detach) disables it, after every channel has closed.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tidepool_bindings::dma::{DmaBuf, DmaPool};
use tidepool_bindings::nvme::pci::{PciError, Registers, VfioPci};
use tidepool_bindings::nvme::queue::{self, Halted, QueueError, QueueGeometry, QueuePair};
use tidepool_bindings::nvme::spec::{
    self, cns, reg, Cap, Cc, Csts, IdentifyController, IdentifyNamespace, Status, SubmissionEntry,
    IDENTIFY_BYTES,
};

/// Entries of the admin queue.
const ADMIN_ENTRIES: u16 = 32;
/// How long one admin command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset waits for each queue deletion before it disables the controller anyway.
const RESET_DELETE_TIMEOUT: Duration = Duration::from_secs(1);
/// I/O queues asked for: more than any host here has reactors.
const IO_QUEUES_WANTED: u16 = 64;

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("controller {bdf}: {what}")]
    Controller { bdf: String, what: String },
    #[error("controller {bdf}: {op}: {err}")]
    Admin {
        bdf: String,
        op: &'static str,
        err: QueueError,
    },
    #[error("controller {bdf}: out of memory for queues or buffers: {err}")]
    Memory { bdf: String, err: std::io::Error },
    #[error("controller {0} is gone (removed or unbound)")]
    Gone(String),
}

/// What each active namespace is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub nsid: u32,
    pub num_blocks: u64,
    pub block_size: u32,
}

/// One I/O queue pair a reactor's channel holds, for reports.
#[derive(Clone, Debug, Serialize)]
pub struct QueueReport {
    pub qid: u16,
    pub entries: u16,
    /// The thread (reactor) that opened it.
    pub thread: String,
    pub nsid: u32,
}

struct Admin {
    queue: QueuePair,
    /// Set by the latest reset: the proof channels use to hand back their requests.
    halted: Option<Halted>,
    /// Which I/O queue ids are in use (index = qid).
    qids: Vec<bool>,
    /// Where the search for a free queue id starts.
    next_qid: usize,
}

pub struct Controller {
    name: String,
    bdf: String,
    regs: Registers,
    cap: Cap,
    identity: IdentifyController,
    namespaces: Vec<Namespace>,
    admin: Mutex<Admin>,
    generation: AtomicU64,
    gone: AtomicBool,
    io_queues_granted: u16,
    io_queue_entries: u16,
    max_command_bytes: usize,
    command_timeout: Duration,
    resets: AtomicU64,
    errors: Mutex<BTreeMap<Status, u64>>,
    queues: Mutex<BTreeMap<u16, QueueReport>>,
}

fn identify_page() -> std::io::Result<DmaBuf> {
    DmaPool::new(IDENTIFY_BYTES, 1)?
        .take()
        .ok_or_else(|| std::io::Error::other("a fresh pool has a buffer"))
}

/// Waits for CSTS.RDY to read `ready` within `timeout`; a fatal status or a gone device ends
/// the wait early with an error.
fn wait_ready(regs: &Registers, ready: bool, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let csts = Csts(regs.read32(reg::CSTS));
        if csts.device_gone() {
            return Err("the device reads all ones (gone)".into());
        }
        if csts.ready() == ready {
            return Ok(());
        }
        if ready && csts.fatal() {
            return Err("controller fatal status (CSTS.CFS) while enabling".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "CSTS.RDY did not become {} within CAP.TO ({} ms)",
                ready as u8,
                timeout.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl Controller {
    /// Opens the PCI function at `bdf` through VFIO and brings the controller up.
    pub fn attach(
        name: &str,
        bdf: &str,
        io_queue_entries: u16,
        command_timeout: Duration,
    ) -> Result<Controller, NvmeError> {
        let pci = std::sync::Arc::new(VfioPci::open(bdf)?);
        let regs = pci.map_bar0()?;
        let fail = |what: String| NvmeError::Controller {
            bdf: bdf.to_string(),
            what,
        };
        let cap = Cap(regs.read64(reg::CAP));
        if cap.0 == u64::MAX {
            return Err(NvmeError::Gone(bdf.to_string()));
        }
        if !cap.supports_nvm_command_set() {
            return Err(fail("does not support the NVM command set".into()));
        }
        if cap.min_page_shift() > 12 {
            return Err(fail(format!(
                "its smallest memory page is {} bytes; tidepool uses 4096",
                1u64 << cap.min_page_shift()
            )));
        }
        let to = Duration::from_millis(cap.timeout_ms().max(500));
        let (admin_queue, halted) = enable(&regs, cap, to).map_err(fail)?;
        let mut admin = Admin {
            queue: admin_queue,
            halted: Some(halted),
            qids: vec![true], // qid 0 is the admin queue
            next_qid: 1,
        };
        let mut bring_up = || -> Result<(IdentifyController, Vec<Namespace>, u16), NvmeError> {
            let admin_err = |op, err| NvmeError::Admin {
                bdf: bdf.to_string(),
                op,
                err,
            };
            let mem = |err| NvmeError::Memory {
                bdf: bdf.to_string(),
                err,
            };
            let mut identify = |cns: u32, nsid: u32, op| {
                let page = identify_page().map_err(mem)?;
                let cmd = SubmissionEntry::identify(cns, nsid, page.iova());
                let (status, _, page) = admin
                    .queue
                    .run(cmd, Some(page), ADMIN_TIMEOUT)
                    .map_err(|e| admin_err(op, e))?;
                if !status.is_success() {
                    return Err(admin_err(
                        op,
                        QueueError::Refused {
                            opcode: spec::admin::IDENTIFY,
                            status,
                        },
                    ));
                }
                let page = page.expect("identify hands its page back");
                let mut bytes = [0u8; IDENTIFY_BYTES];
                bytes.copy_from_slice(&page.as_slice()[..IDENTIFY_BYTES]);
                Ok(bytes)
            };
            let identity =
                IdentifyController::parse(&identify(cns::CONTROLLER, 0, "identify controller")?);
            let list = identify(cns::ACTIVE_NAMESPACES, 0, "identify active namespaces")?;
            let mut namespaces = Vec::new();
            for nsid in spec::parse_namespace_list(&list) {
                let ns = IdentifyNamespace::parse(&identify(
                    cns::NAMESPACE,
                    nsid,
                    "identify namespace",
                )?);
                let bs = ns.block_size();
                if ns.metadata_bytes != 0 || !(512..=65536).contains(&bs) || ns.nsze == 0 {
                    log::warn!(
                        "nvme {bdf}: namespace {nsid} skipped (block size {bs}, {} metadata \
                         bytes per block, {} blocks): tidepool takes 512 B to 64 KiB blocks \
                         without metadata",
                        ns.metadata_bytes,
                        ns.nsze
                    );
                    continue;
                }
                namespaces.push(Namespace {
                    nsid,
                    num_blocks: ns.nsze,
                    block_size: bs as u32,
                });
            }
            let (status, dw0, _) = admin
                .queue
                .run(
                    SubmissionEntry::set_number_of_queues(IO_QUEUES_WANTED, IO_QUEUES_WANTED),
                    None,
                    ADMIN_TIMEOUT,
                )
                .map_err(|e| admin_err("set features (number of queues)", e))?;
            if !status.is_success() {
                return Err(admin_err(
                    "set features (number of queues)",
                    QueueError::Refused {
                        opcode: spec::admin::SET_FEATURES,
                        status,
                    },
                ));
            }
            let granted = ((dw0 & 0xffff) as u16).min((dw0 >> 16) as u16) + 1;
            Ok((identity, namespaces, granted))
        };
        let (identity, namespaces, granted) = match bring_up() {
            Ok(r) => r,
            Err(e) => {
                disable(&regs, to);
                if let Some(h) = queue::halted(&regs) {
                    admin.queue.retire(h);
                }
                return Err(e);
            }
        };
        admin.halted = None;
        admin.qids.resize(granted as usize + 1, false);
        let max_command_bytes = match identity.mdts {
            0 => queue::MAX_COMMAND_BYTES,
            m => (1usize << (cap.min_page_shift() + m as u32)).min(queue::MAX_COMMAND_BYTES),
        };
        let entries = io_queue_entries.min(cap.max_queue_entries().min(4096) as u16);
        log::info!(
            "nvme {name} ({bdf}): {} {} fw {}, {} namespace(s), {granted} I/O queues, \
             {entries} entries each, {max_command_bytes} bytes per command",
            identity.model,
            identity.serial,
            identity.firmware,
            namespaces.len()
        );
        Ok(Controller {
            name: name.to_string(),
            bdf: bdf.to_string(),
            regs,
            cap,
            identity,
            namespaces,
            admin: Mutex::new(admin),
            generation: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            io_queues_granted: granted,
            io_queue_entries: entries,
            max_command_bytes,
            command_timeout,
            resets: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(BTreeMap::new()),
        })
    }

    fn admin(&self) -> MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn bdf(&self) -> &str {
        &self.bdf
    }
    pub fn identity(&self) -> &IdentifyController {
        &self.identity
    }
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
    pub fn max_command_bytes(&self) -> usize {
        self.max_command_bytes
    }

    /// Which reset the controller is in; see the module contract.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The proof of the latest reset, for a channel whose generation is older.
    pub fn halted_since_reset(&self) -> Option<Halted> {
        self.admin().halted
    }

    /// Whether the device has gone away, or the kernel asked for it back (an unbind or a
    /// removal, which waits until the controller is detached); reads CSTS and VFIO's request
    /// interrupt to find out.
    pub fn check_gone(&self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        let why = if self.regs.pci().removal_requested() {
            "the kernel asks for the device back (unbound or removed): detach it"
        } else if Csts(self.regs.read32(reg::CSTS)).device_gone() {
            "the device is gone (its registers read all ones)"
        } else {
            return false;
        };
        log::error!(
            "nvme {} ({}): {why}; its I/O fails with ENODEV",
            self.name,
            self.bdf
        );
        self.gone.store(true, Ordering::Relaxed);
        true
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// The proof that the controller does no DMA now (disabled, or gone), if it holds.
    pub fn halted_now(&self) -> Option<Halted> {
        queue::halted(&self.regs)
    }

    /// Whether the controller reports a fatal status (it needs a reset).
    pub fn fatal(&self) -> bool {
        let csts = Csts(self.regs.read32(reg::CSTS));
        !csts.device_gone() && csts.fatal()
    }

    /// Counts a failed completion by its status.
    pub fn count_error(&self, status: Status) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.code())
            .or_default() += 1;
    }

    /// Creates an I/O queue pair for the calling reactor's channel on namespace `nsid`.
    pub fn create_io_queue(&self, nsid: u32, block_shift: u32) -> Result<QueuePair, NvmeError> {
        if self.check_gone() {
            return Err(NvmeError::Gone(self.bdf.clone()));
        }
        let mut admin = self.admin();
        // The next free id after the last one handed out, so that an id a reset freed is not
        // handed out again at once (a channel that has not yet seen the reset could still
        // ring its old doorbell).
        let n = admin.qids.len();
        let qid = (1..n)
            .map(|i| (admin.next_qid + i - 2) % (n - 1) + 1)
            .find(|&q| !admin.qids[q])
            .ok_or_else(|| NvmeError::Controller {
                bdf: self.bdf.clone(),
                what: format!(
                    "all {} I/O queues it granted are in use",
                    self.io_queues_granted
                ),
            })? as u16;
        let geo = QueueGeometry {
            qid,
            entries: self.io_queue_entries,
            doorbell_stride: self.cap.doorbell_stride(),
            block_shift,
            max_command_bytes: self.max_command_bytes,
        };
        let mut qp = QueuePair::new(geo, &self.regs).map_err(|err| NvmeError::Memory {
            bdf: self.bdf.clone(),
            err,
        })?;
        let [create_cq, create_sq] = qp.create_commands();
        for (op, cmd) in [
            ("create I/O completion queue", create_cq),
            ("create I/O submission queue", create_sq),
        ] {
            let result = admin.queue.run(cmd, None, ADMIN_TIMEOUT);
            let err = match result {
                Ok((status, _, _)) if status.is_success() => continue,
                Ok((status, _, _)) => QueueError::Refused {
                    opcode: cmd.opcode(),
                    status,
                },
                Err(e) => e,
            };
            // Undo what was made (a CQ without its SQ) before the memory can go.
            if qp.delete(&mut admin.queue, ADMIN_TIMEOUT).is_err() {
                log::error!("nvme {}: could not delete half-made queue {qid}", self.bdf);
            }
            return Err(NvmeError::Admin {
                bdf: self.bdf.clone(),
                op,
                err,
            });
        }
        admin.qids[qid as usize] = true;
        admin.next_qid = qid as usize + 1;
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        log::info!(
            "nvme {}: I/O queue pair {qid} ({} entries) for {thread}, namespace {nsid}",
            self.name,
            qp.entries()
        );
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                qid,
                QueueReport {
                    qid,
                    entries: qp.entries(),
                    thread,
                    nsid,
                },
            );
        Ok(qp)
    }

    /// Deletes a channel's queue pair (it holds no I/O). A queue a reset already took, or one
    /// of a controller that is disabled or gone, is only forgotten.
    pub fn delete_io_queue(&self, mut qp: QueuePair, generation: u64) {
        let qid = qp.qid();
        let mut admin = self.admin();
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&qid);
        if generation != self.generation() {
            // A reset took it; the reset's halt is the proof.
            if let Some(h) = admin.halted {
                qp.retire(h);
            }
            return;
        }
        if let Some(h) = queue::halted(&self.regs) {
            // Disabled or gone: nothing to delete.
            qp.retire(h);
            return;
        }
        match qp.delete(&mut admin.queue, ADMIN_TIMEOUT) {
            Ok(()) => admin.qids[qid as usize] = false,
            Err(e) => log::error!("nvme {}: deleting queue {qid}: {e}", self.bdf),
        }
    }

    /// Resets the controller after `reason`, unless a reset newer than `seen_generation`
    /// already happened. Every I/O queue goes; channels learn it from the generation.
    pub fn reset(&self, seen_generation: u64, reason: &str) -> Result<(), NvmeError> {
        let mut admin = self.admin();
        if self.generation() != seen_generation {
            return Ok(());
        }
        self.resets.fetch_add(1, Ordering::Relaxed);
        // First of all, so that channels stop ringing their doorbells; they wait on the admin
        // lock for the halt that lets them hand back what they held.
        self.generation.fetch_add(1, Ordering::AcqRel);
        log::error!(
            "nvme {} ({}): resetting the controller: {reason}",
            self.name,
            self.bdf
        );
        let to = Duration::from_millis(self.cap.timeout_ms().max(500));
        if !self.fatal() && !self.check_gone() {
            // As Linux's nvme_dev_disable does for a live controller: delete the I/O queues
            // first (the controller aborts what they hold), then disable. Disabling with
            // commands in flight is the path controllers (QEMU's model among them) handle
            // worst.
            let qids: Vec<u16> = self
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect();
            let deletes = qids
                .iter()
                .map(|&q| SubmissionEntry::delete_io_sq(q))
                .chain(qids.iter().map(|&q| SubmissionEntry::delete_io_cq(q)));
            for cmd in deletes {
                if let Err(e) = admin.queue.run(cmd, None, RESET_DELETE_TIMEOUT) {
                    log::warn!("nvme {}: deleting a queue before the reset: {e}", self.bdf);
                    break;
                }
            }
        }
        disable(&self.regs, to);
        let Some(halted) = queue::halted(&self.regs) else {
            self.gone.store(true, Ordering::Relaxed);
            return Err(NvmeError::Controller {
                bdf: self.bdf.clone(),
                what: "did not halt on reset; given up".into(),
            });
        };
        admin.queue.retire(halted);
        admin.halted = Some(halted);
        admin.qids.iter_mut().skip(1).for_each(|q| *q = false);
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let fail = |what: String| NvmeError::Controller {
            bdf: self.bdf.clone(),
            what,
        };
        let (queue, _) = enable(&self.regs, self.cap, to).map_err(fail)?;
        admin.queue = queue;
        let (status, _, _) = admin
            .queue
            .run(
                SubmissionEntry::set_number_of_queues(IO_QUEUES_WANTED, IO_QUEUES_WANTED),
                None,
                ADMIN_TIMEOUT,
            )
            .map_err(|err| NvmeError::Admin {
                bdf: self.bdf.clone(),
                op: "set features (number of queues)",
                err,
            })?;
        if !status.is_success() {
            return Err(fail(format!(
                "number of queues refused after reset: {status}"
            )));
        }
        Ok(())
    }

    /// `bdev_nvme_get_controllers`' entry for this controller.
    pub fn report(&self) -> serde_json::Value {
        let id = &self.identity;
        let (major, minor, ter) = spec::version(id.version);
        let errors: Vec<serde_json::Value> = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, n)| {
                serde_json::json!({"sct": s.sct(), "sc": s.sc(), "status": s.name(),
                    "count": n})
            })
            .collect();
        let queues: Vec<QueueReport> = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        serde_json::json!({
            "name": self.name,
            "ctrlrs": [{
                "state": if self.is_gone() { "gone" } else { "enabled" },
                "trid": {"trtype": "PCIe", "traddr": self.bdf},
                "cntlid": id.cntlid,
                "vendor_id": format!("{:#06x}", id.vid),
                "model_number": id.model,
                "serial_number": id.serial,
                "firmware_revision": id.firmware,
                "version": format!("{major}.{minor}.{ter}"),
                "mdts": id.mdts,
                "max_transfer_bytes": self.max_command_bytes,
                "oncs": {"write_zeroes": id.has_write_zeroes(),
                         "dataset_management": id.has_dataset_management()},
                "volatile_write_cache": id.has_volatile_write_cache(),
                "namespaces": self.namespaces,
                "io_queues_granted": self.io_queues_granted,
                "io_qpairs": queues,
                "resets": self.resets.load(Ordering::Relaxed),
                "command_timeout_ms": self.command_timeout.as_millis() as u64,
                "error_completions": errors,
            }]
        })
    }
}

/// Disables the controller (CC.EN = 0) and waits for CSTS.RDY to clear within `to`.
fn disable(regs: &Registers, to: Duration) {
    let cc = Cc(regs.read32(reg::CC));
    if cc.enable() {
        regs.write32(reg::CC, cc.disabled().0);
    }
    if let Err(e) = wait_ready(regs, false, to) {
        log::error!("nvme: disabling: {e}");
    }
}

/// Disables, sets up a fresh admin queue and enables: the controller is ready for admin
/// commands. Returns the admin queue and the proof that the controller was halted first.
fn enable(regs: &Registers, cap: Cap, to: Duration) -> Result<(QueuePair, Halted), String> {
    disable(regs, to);
    let halted =
        queue::halted(regs).ok_or("the controller did not halt when disabled".to_string())?;
    let geo = QueueGeometry {
        qid: 0,
        entries: ADMIN_ENTRIES.min(cap.max_queue_entries().min(4096) as u16),
        doorbell_stride: cap.doorbell_stride(),
        block_shift: 12,
        max_command_bytes: queue::PAGE_BYTES,
    };
    let mut admin = QueuePair::new(geo, regs).map_err(|e| e.to_string())?;
    let (sq, cq) = admin.ring_iovas();
    // Interrupts stay masked: everything here is polled.
    regs.write32(reg::INTMS, u32::MAX);
    regs.write32(reg::AQA, spec::aqa(geo.entries, geo.entries));
    regs.write64(reg::ASQ, sq);
    regs.write64(reg::ACQ, cq);
    regs.write32(reg::CC, Cc::enabled(12).0);
    if let Err(e) = wait_ready(regs, true, to) {
        disable(regs, to);
        if let Some(h) = queue::halted(regs) {
            admin.retire(h);
        }
        return Err(e);
    }
    Ok((admin, halted))
}

impl Drop for Controller {
    fn drop(&mut self) {
        let to = Duration::from_millis(self.cap.timeout_ms().max(500));
        disable(&self.regs, to);
        let mut admin = self.admin();
        match queue::halted(&self.regs) {
            Some(h) => admin.queue.retire(h),
            None => log::error!("nvme {}: did not halt on detach", self.bdf),
        }
        log::info!("nvme {} ({}): detached", self.name, self.bdf);
    }
}
