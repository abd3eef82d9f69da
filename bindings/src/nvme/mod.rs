//! The userspace NVMe driver's raw half: register and command layouts ([`spec`]), a PCI
//! function through VFIO with its BAR0 ([`pci`]), and polled queue pairs that own the
//! buffers they hand to the controller ([`queue`]). The controller's logic (bring-up,
//! namespaces, resets, the bdev) is in the engine's `bdev::nvme`, which uses only the safe
//! API here.

pub mod pci;
pub mod queue;
pub mod spec;
