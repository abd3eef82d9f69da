//! Every piece of FFI and raw memory that tidepool uses lives in this crate, so that the
//! engine, the daemon and the benchmark can `#![forbid(unsafe_code)]`.
//!
//! - [`batch`]: moving a batch of messages into a ring's slots with one copy.
//! - [`dma`]: pools of page-aligned I/O buffers, owned values handed to a device and back.
//! - [`dma_space`]: which memory devices reach through VFIO, at which IOVA.
//! - [`nvme`]: NVMe registers and commands, a PCI function through VFIO, polled queue pairs.
//! - [`device_memory`]: a RAM region that several reactors read and write, the store behind the
//!   `malloc` bdev.
//! - [`uring`]: one io_uring queue pair with registered files and buffers; it owns every buffer
//!   while the kernel may touch it.
//! - [`tsc`]: a cheap monotonic clock in nanoseconds (the CPU's invariant TSC where there is one).
//! - [`os`]: small system calls the standard library lacks (timer slack, block-device size).
//! - [`epoll`]: one-shot socket readiness, so a parked reactor wakes when a client writes.
//!
//! Every `unsafe` block carries a `// SAFETY:` line that says why it is sound.

pub mod batch;
pub mod device_memory;
pub mod dma;
pub mod dma_space;
pub mod epoll;
pub mod nvme;
pub mod os;
pub mod tsc;
pub mod uring;
