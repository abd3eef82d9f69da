//! A PCI function handed to this process through VFIO, and its BAR0 registers.
//!
//! Contract:
//! - [`VfioPci::open`] takes a function bound to `vfio-pci` with an IOMMU group, joins the
//!   process's one VFIO container (made by the first open, shared by all later ones, so every
//!   device sees the same IOVA space, see [`crate::dma_space`]), enables memory decoding and
//!   bus mastering, and maps BAR0. Checks come first and each refusal names its cause; a
//!   refused open changes nothing.
//! - [`Registers`] reads and writes BAR0 with volatile 32-bit accesses (64-bit registers as
//!   two halves, low first), bounds-checked: an access outside the mapping is a programmer
//!   error and panics. [`Doorbell`]s are handles on single registers that keep the mapping
//!   alive.
//! - VFIO itself is reached through rust-vmm's `vfio-ioctls` (no hand-written ioctl numbers).
//! - When the kernel wants the device back (an unbind, a hot removal), VFIO signals the
//!   device's request interrupt; [`VfioPci::removal_requested`] reports it, and stays true.
//!   The kernel waits for the process to let the device go: the owner detaches it.

use crate::dma_space::{self, DmaMapper};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("'{0}' is not a PCI address of the form dddd:bb:dd.f (hex)")]
    BadAddress(String),
    #[error("no PCI device {0} (nothing at /sys/bus/pci/devices/{0})")]
    NoSuchDevice(String),
    #[error(
        "PCI device {bdf} is bound to {driver}, not vfio-pci (bind it with scripts/setup_nvme.sh)"
    )]
    NotBoundToVfio { bdf: String, driver: String },
    #[error("PCI device {0} has no IOMMU group (is the IOMMU on? intel_iommu=on)")]
    NoIommuGroup(String),
    #[error("VFIO is not usable for {bdf}: {reason}")]
    Vfio { bdf: String, reason: String },
    #[error("PCI device {bdf}: BAR0 cannot be mapped: {reason}")]
    Bar { bdf: String, reason: String },
    #[error("mapping DMA memory into the IOMMU for {bdf}: {err}")]
    DmaMap { bdf: String, err: io::Error },
}

/// Checks a PCI address's form: `dddd:bb:dd.f`, lower or upper case hex.
pub fn check_bdf(bdf: &str) -> Result<(), PciError> {
    let bad = || PciError::BadAddress(bdf.to_string());
    let (domain, rest) = bdf.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let ok = hex(domain, 4)
        && hex(bus, 2)
        && hex(dev, 2)
        && u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7');
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Where the kernel lists PCI functions.
const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The sysfs directory of a PCI function.
pub fn sysfs_path(bdf: &str) -> PathBuf {
    Path::new(PCI_DEVICES).join(bdf)
}

/// The driver a PCI function is bound to, if any.
pub fn bound_driver(bdf: &str) -> Option<String> {
    driver_in(&sysfs_path(bdf))
}

fn driver_in(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The checks [`VfioPci::open`] makes before it touches VFIO, against the sysfs tree at
/// `devices` (the kernel's `/sys/bus/pci/devices`): the address's form, the device, its
/// driver, its IOMMU group.
fn check_device(devices: &Path, bdf: &str) -> Result<PathBuf, PciError> {
    check_bdf(bdf)?;
    let path = devices.join(bdf);
    if !path.exists() {
        return Err(PciError::NoSuchDevice(bdf.to_string()));
    }
    match driver_in(&path) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            return Err(PciError::NotBoundToVfio {
                bdf: bdf.to_string(),
                driver: other.unwrap_or_else(|| "no driver".to_string()),
            })
        }
    }
    if !path.join("iommu_group").exists() {
        return Err(PciError::NoIommuGroup(bdf.to_string()));
    }
    Ok(path)
}

/// The process's IOMMU domain: one VFIO container that every opened device joins.
struct Domain {
    container: Arc<VfioContainer>,
}

impl DmaMapper for Domain {
    fn map(&self, addr: usize, len: usize) -> io::Result<()> {
        // SAFETY: `dma_space` maps only regions of live DMA pools, and unmaps each before the
        // pool's memory is unmapped. The pools' memory is reached by the process only through
        // raw pointers and short-lived slices of buffers no device is using (a buffer is
        // owned by the queue that handed it to a device until its completion), which is the
        // use the crate's contract allows.
        unsafe {
            self.container
                .vfio_dma_map(addr as u64, len, addr as *mut u8)
        }
        .map_err(|e| io::Error::other(e.to_string()))
    }

    fn unmap(&self, addr: usize, len: usize) {
        if let Err(e) = self.container.vfio_dma_unmap(addr as u64, len) {
            log::warn!("vfio: unmapping DMA region {addr:#x}+{len:#x}: {e}");
        }
    }
}

/// The live domain, if any device holds it.
static DOMAIN: Mutex<Weak<Domain>> = Mutex::new(Weak::new());

/// One PCI function opened through VFIO.
pub struct VfioPci {
    bdf: String,
    /// Dropped before `domain` (field order): a device leaves its group before the container
    /// can go.
    device: VfioDevice,
    _domain: Arc<Domain>,
    /// Signalled by VFIO when the kernel asks for the device back (None: the device has no
    /// request interrupt).
    removal: Option<EventFd>,
    removal_seen: AtomicBool,
}

impl VfioPci {
    pub fn open(bdf: &str) -> Result<VfioPci, PciError> {
        let path = check_device(Path::new(PCI_DEVICES), bdf)?;
        let vfio_err = |e: &dyn std::fmt::Display| PciError::Vfio {
            bdf: bdf.to_string(),
            reason: e.to_string(),
        };
        let mut live = DOMAIN.lock().unwrap_or_else(|p| p.into_inner());
        let (domain, fresh) = match live.upgrade() {
            Some(d) => (d, false),
            None => {
                let container = VfioContainer::new(None).map_err(|e| vfio_err(&e))?;
                let domain = Arc::new(Domain {
                    container: Arc::new(container),
                });
                (domain, true)
            }
        };
        let ops: Arc<dyn VfioOps> = domain.container.clone();
        // The first device's group sets the container's IOMMU type; only then can it map.
        let device = VfioDevice::new(&path, ops, false).map_err(|e| vfio_err(&e))?;
        if fresh {
            let mapper: Arc<dyn DmaMapper> = domain.clone();
            dma_space::add_mapper(&mapper).map_err(|err| PciError::DmaMap {
                bdf: bdf.to_string(),
                err,
            })?;
            *live = Arc::downgrade(&domain);
        }
        drop(live);
        let removal = device
            .get_irq_info(VFIO_PCI_REQ_IRQ_INDEX)
            .filter(|irq| irq.count > 0)
            .and_then(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
            .filter(|fd| device.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd]).is_ok());
        if removal.is_none() {
            log::warn!("vfio {bdf}: no request interrupt; a removal will not be noticed");
        }
        let pci = VfioPci {
            bdf: bdf.to_string(),
            device,
            _domain: domain,
            removal,
            removal_seen: AtomicBool::new(false),
        };
        pci.enable_bus_master();
        Ok(pci)
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Whether the kernel has asked for the device back (an unbind or a removal). One
    /// non-blocking read of an eventfd; once true, always true.
    pub fn removal_requested(&self) -> bool {
        if self.removal_seen.load(Ordering::Relaxed) {
            return true;
        }
        let asked = self.removal.as_ref().is_some_and(|fd| fd.read().is_ok());
        if asked {
            self.removal_seen.store(true, Ordering::Relaxed);
        }
        asked
    }

    /// Sets Memory Space Enable and Bus Master Enable in the command register (PCI 3.0,
    /// 6.2.2): without them the device answers no BAR access and does no DMA.
    fn enable_bus_master(&self) {
        const COMMAND: u64 = 0x04;
        let mut cmd = [0u8; 2];
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, COMMAND);
        let v = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &v.to_le_bytes(), COMMAND);
    }

    /// Maps BAR0 (or, when the kernel maps it in pieces, the piece at offset 0, which holds
    /// the registers and the first doorbells).
    pub fn map_bar0(self: &Arc<Self>) -> Result<Registers, PciError> {
        let bar_err = |reason: String| PciError::Bar {
            bdf: self.bdf.clone(),
            reason,
        };
        let index = VFIO_PCI_BAR0_REGION_INDEX;
        if self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(bar_err("the region cannot be mmapped".into()));
        }
        let mut len = self.device.get_region_size(index) as usize;
        for cap in self.device.get_region_caps(index) {
            if let VfioRegionInfoCap::SparseMmap(sparse) = cap {
                len = sparse
                    .areas
                    .iter()
                    .find(|a| a.offset == 0)
                    .map(|a| a.size as usize)
                    .unwrap_or(0);
            }
        }
        if len < 0x1008 {
            return Err(bar_err(format!(
                "{len} bytes mappable, too few for the registers"
            )));
        }
        let offset = self.device.get_region_offset(index);
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(self.device.as_raw_fd())
            .map_err(|e| bar_err(e.to_string()))?;
        Ok(Registers {
            map: Arc::new(BarMap {
                map,
                _pci: self.clone(),
            }),
        })
    }
}

/// A mapped BAR; unmapped when the last handle goes.
struct BarMap {
    map: memmap2::MmapRaw,
    _pci: Arc<VfioPci>,
}

/// BAR0 of an NVMe controller.
#[derive(Clone)]
pub struct Registers {
    map: Arc<BarMap>,
}

impl Registers {
    fn ptr(&self, offset: usize, width: usize) -> *mut u32 {
        assert!(
            offset.is_multiple_of(4) && offset + width <= self.map.map.len(),
            "register access at {offset:#x} outside BAR0's {:#x} mapped bytes",
            self.map.map.len()
        );
        self.map.map.as_mut_ptr().wrapping_add(offset) as *mut u32
    }

    /// The PCI function these registers belong to.
    pub fn pci(&self) -> &VfioPci {
        &self.map._pci
    }

    /// Bytes of BAR0 mapped.
    pub fn len(&self) -> usize {
        self.map.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn read32(&self, offset: usize) -> u32 {
        let p = self.ptr(offset, 4);
        // SAFETY: `p` is 4-byte aligned and inside the live mapping (checked above); MMIO is
        // read with a volatile access so the compiler neither elides nor merges it.
        unsafe { p.read_volatile() }
    }

    pub fn write32(&self, offset: usize, value: u32) {
        let p = self.ptr(offset, 4);
        // Everything the device is about to read (queue entries, buffers) is written first.
        fence(Ordering::SeqCst);
        // SAFETY: as in `read32`.
        unsafe { p.write_volatile(value) }
    }

    pub fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | (hi << 32)
    }

    pub fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// A handle on one 32-bit register, for the hot path.
    pub fn doorbell(&self, offset: usize) -> Option<Doorbell> {
        if !offset.is_multiple_of(4) || offset + 4 > self.len() {
            return None;
        }
        Some(Doorbell {
            regs: self.clone(),
            offset,
        })
    }
}

/// One doorbell register.
pub struct Doorbell {
    regs: Registers,
    offset: usize,
}

impl Doorbell {
    #[inline]
    pub fn ring(&self, value: u32) {
        self.regs.write32(self.offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_checked() {
        for good in ["0000:00:03.0", "0000:af:1f.7", "ABCD:00:00.1"] {
            assert!(check_bdf(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "00:03.0",
            "0000:00:03",
            "0000:00:20.0",
            "0000:00:03.8",
            "0000:0:03.0",
            "zzzz:00:03.0",
            "0000:00:03.0 ",
            "../../0:00:03.0",
        ] {
            assert!(
                matches!(check_bdf(bad), Err(PciError::BadAddress(_))),
                "{bad:?} accepted"
            );
        }
    }

    /// The refusals that need a device this host lacks, against a sysfs tree laid out as the
    /// kernel lays it out (the guest tests meet the real ones, except a device without an
    /// IOMMU group: with the IOMMU on, every device has one).
    #[test]
    fn devices_on_other_drivers_or_without_an_iommu_group_are_refused() {
        let root = std::env::temp_dir().join(format!("tp-sysfs-{}", std::process::id()));
        let drivers = root.join("drivers");
        for d in ["nvme", "vfio-pci"] {
            std::fs::create_dir_all(drivers.join(d)).unwrap();
        }
        let devices = root.join("devices");
        let device = |bdf: &str, driver: Option<&str>, group: bool| {
            let dir = devices.join(bdf);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(d) = driver {
                std::os::unix::fs::symlink(drivers.join(d), dir.join("driver")).unwrap();
            }
            if group {
                std::fs::create_dir_all(root.join("groups/7")).unwrap();
                std::os::unix::fs::symlink(root.join("groups/7"), dir.join("iommu_group")).unwrap();
            }
        };
        device("0000:00:01.0", Some("nvme"), true);
        device("0000:00:02.0", None, true);
        device("0000:00:03.0", Some("vfio-pci"), false);
        device("0000:00:04.0", Some("vfio-pci"), true);
        let refusal = |bdf: &str| check_device(&devices, bdf).unwrap_err().to_string();
        assert!(refusal("0000:00:01.0").contains("bound to nvme, not vfio-pci"));
        assert!(refusal("0000:00:02.0").contains("bound to no driver"));
        assert!(refusal("0000:00:03.0").contains("has no IOMMU group"));
        assert!(refusal("0000:00:05.0").contains("no PCI device 0000:00:05.0"));
        assert!(refusal("00:04.0").contains("not a PCI address"));
        assert_eq!(
            check_device(&devices, "0000:00:04.0").unwrap(),
            devices.join("0000:00:04.0")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_device_is_refused_by_name() {
        // No host here has a PCI function at this address.
        match VfioPci::open("0000:ff:1f.7") {
            Err(PciError::NoSuchDevice(b)) => assert_eq!(b, "0000:ff:1f.7"),
            Err(e) => panic!("wrong refusal: {e}"),
            Ok(_) => panic!("opened a device that is not there"),
        }
    }
}
