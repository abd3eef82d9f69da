//! tidepool: a polled-mode block storage engine.
//!
//! The map of the crate:
//! - [`reactor`]: the poll loop. One [`reactor::Reactor`] per core steps through its inbox,
//!   its bdev channels and its timers; [`reactor::Engine`] runs one pinned thread per reactor.
//! - [`ring`]: the bounded lock-free inbox reactors talk through, with wake-up of a parked peer.
//! - [`bdev`]: the block-device contract and its backends (`null`, `malloc`, `uring`, `error`,
//!   `delay`), and the registry of bdevs by name.
//! - [`pool`]: pools of member bdevs with on-device metadata; making, finding (after a
//!   restart) and removing pools and their volumes.
//! - [`volume`]: volumes cut into shards and their routing table (the reactors' side of
//!   volume I/O is `reactor::router`).
//! - [`balancer`]: moves shards off a reactor that carries more than its share of the load.
//! - [`load`]: the load monitor each reactor runs in its poll loop, and the state table it
//!   publishes to.
//! - [`config`]: SPDK-style JSON configuration that creates bdevs.
//! - [`nbd`]: the NBD server; its connections are served by the reactors.
//! - [`nvmf`]: NVMe over Fabrics on TCP: its PDUs (the target and initiator are to come).
//! - [`rpc`]: the JSON-RPC 2.0 control plane (framing, dispatch, methods, Unix socket server).
//! - [`cpuset`]: `-m 0x3` / `--cores 0,1` parsing.
//! - [`time`]: the engine's nanosecond clock.
//!
//! Raw memory and FFI are in `tidepool-bindings`; this crate forbids them (see below).
#![forbid(unsafe_code)]

pub mod balancer;
pub mod bdev;
pub mod config;
pub mod cpuset;
pub mod json_strict;
pub mod load;
pub mod nbd;
pub mod nvmf;
pub mod pool;
pub mod reactor;
pub mod ring;
pub mod rng;
pub mod rpc;
mod socket_path;
pub mod time;
pub mod volume;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;

pub use tidepool_bindings::dma::{DmaBuf, DmaPool};
pub use tidepool_bindings::os;
