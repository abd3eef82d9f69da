//! The block-device contract.
//!
//! A [`Bdev`] describes a device (name, block size, block count, which I/O types it supports)
//! and opens one [`BdevChannel`] per reactor: the reactor's private queue pair, never shared.
//! An I/O is an [`IoRequest`], an owned value carrying its buffer; it goes into
//! [`BdevChannel::submit`] and comes back whole inside a [`Completion`] from
//! [`BdevChannel::poll`], with a typed [`IoStatus`]. Channels never call back into their
//! caller: completions are queued, then run by the reactor.
//!
//! A channel that is out of resources hands the request back from `submit`; the reactor keeps
//! it and retries it (`reactor` is the one place that does so). Ranges, buffer sizes and I/O
//! types are checked by the reactor before a channel sees a request, so backends can assume
//! valid requests.
//!
//! Backends, one module each, with the parameters that create them: [`null`], [`malloc`],
//! [`uring`], [`nvme`] (userspace, over VFIO), [`error`], [`delay`]. [`registry`] names bdevs and tracks claims.

pub mod delay;
pub mod error;
pub mod iostat;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod registry;
pub mod uring;

use crate::time::Nanos;
use serde::Serialize;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use tidepool_bindings::dma::DmaBuf;

pub use registry::{BdevId, BdevRegistry};

/// The kinds of I/O a bdev may support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
}

impl IoType {
    pub const ALL: [IoType; 5] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether the I/O moves data through a buffer.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }
}

/// A set of I/O types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoTypeSet(u8);

impl IoTypeSet {
    pub fn all() -> IoTypeSet {
        IoTypeSet::of(&IoType::ALL)
    }

    pub fn of(types: &[IoType]) -> IoTypeSet {
        IoTypeSet(types.iter().fold(0, |acc, t| acc | t.bit()))
    }

    #[inline]
    pub fn contains(self, t: IoType) -> bool {
        self.0 & t.bit() != 0
    }

    /// The types both sets hold.
    pub fn intersect(self, other: IoTypeSet) -> IoTypeSet {
        IoTypeSet(self.0 & other.0)
    }
}

/// How an I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// The device failed the I/O; `errno` when the OS gave one.
    Failed {
        errno: i32,
    },
    /// The request itself was wrong (range, buffer size); nothing was done.
    Invalid,
    /// The bdev does not support this I/O type; nothing was done.
    Unsupported,
    /// The bdev went away while the request waited; nothing was done.
    Aborted,
    /// An NVMe controller failed the command with this status (type and code, NVMe Base
    /// Specification 4.6.1): the one device status space every storage stack speaks, kept
    /// whole so that logs and migration reasons can name it.
    Nvme {
        sct: u8,
        sc: u8,
    },
}

impl IoStatus {
    #[inline]
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::Success => write!(f, "success"),
            IoStatus::Failed { errno: 0 } => write!(f, "I/O error"),
            IoStatus::Failed { errno } => {
                write!(
                    f,
                    "I/O error ({})",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
            IoStatus::Invalid => write!(f, "invalid request"),
            IoStatus::Unsupported => write!(f, "unsupported I/O type"),
            IoStatus::Aborted => write!(f, "aborted"),
            IoStatus::Nvme { sct, sc } => write!(
                f,
                "NVMe {}",
                tidepool_bindings::nvme::spec::Status::new(*sct, *sc)
            ),
        }
    }
}

/// Where a completion goes: the reactor and task that issued the I/O, and the task's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoOrigin {
    pub reactor: u16,
    pub task: u32,
    pub tag: u64,
}

/// One I/O, owned: it moves into a channel and comes back in its completion.
#[derive(Debug)]
pub struct IoRequest {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u32,
    /// The data buffer for reads and writes, `num_blocks * block_size` bytes long.
    pub buf: Option<DmaBuf>,
    pub origin: IoOrigin,
    /// When the executing reactor took the request (it sets this; callers leave 0). A
    /// completion that comes back from another reactor carries the value the request was
    /// sent with: the executing reactor's clock reading stays there.
    pub submit_time_ns: Nanos,
}

impl IoRequest {
    /// A request not yet submitted (the executing reactor sets `submit_time_ns`).
    pub fn new(
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u32,
        buf: Option<DmaBuf>,
        origin: IoOrigin,
    ) -> IoRequest {
        IoRequest {
            io_type,
            offset_blocks,
            num_blocks,
            buf,
            origin,
            submit_time_ns: 0,
        }
    }
}

/// A finished I/O.
#[derive(Debug)]
pub struct Completion {
    pub io: IoRequest,
    pub status: IoStatus,
}

impl Completion {
    pub fn new(io: IoRequest, status: IoStatus) -> Completion {
        Completion { io, status }
    }
}

/// What every bdev reports about itself.
#[derive(Clone, Debug)]
pub struct BdevInfo {
    pub name: String,
    /// SPDK's product name ("Null disk", "Malloc disk", ...).
    pub product_name: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: String,
    pub supported: IoTypeSet,
}

impl BdevInfo {
    /// The info of a bdev stacked on `base` (error, delay): same geometry and I/O types.
    pub fn stacked_on(
        base: &BdevInfo,
        name: String,
        product_name: &'static str,
        uuid: Option<&String>,
    ) -> BdevInfo {
        BdevInfo {
            name,
            product_name,
            block_size: base.block_size,
            num_blocks: base.num_blocks,
            uuid: uuid.cloned().unwrap_or_else(new_uuid),
            supported: base.supported,
        }
    }
}

/// A block device.
pub trait Bdev: Send + Sync + AsAny {
    fn info(&self) -> &BdevInfo;

    /// Opens this reactor's private channel. Called once per reactor, on that reactor.
    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError>;

    /// Backend details for `bdev_get_bdevs` (`driver_specific`).
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Names of the bdevs this one is stacked on (it claims them).
    fn base_bdevs(&self) -> Vec<String> {
        Vec::new()
    }

    /// The file or block device holding this bdev's blocks, when it has one: the registry
    /// refuses a second bdev on the same one (they would write over each other's blocks).
    fn backing(&self) -> Option<&Backing> {
        None
    }

    /// The `{"method", "params"}` entry that recreates this bdev, for saved configs; null
    /// when something else recreates it (a volume comes back with its pool).
    fn config_entry(&self) -> serde_json::Value;
}

/// Gives every bdev an `&dyn Any` view, so code that knows a backend (its own RPC methods,
/// the reactor's volume routing) can reach it with [`downcast_ref`](dyn Bdev::downcast_ref)
/// while the contract itself names no backend.
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl dyn Bdev {
    /// This bdev as its backend's type, when it is one.
    pub fn downcast_ref<T: Bdev + 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

/// One reactor's queue pair on a bdev.
pub trait BdevChannel {
    /// Takes a valid request. Hands it back when the channel is out of resources; the
    /// caller keeps it and submits it again after the next completions.
    fn submit(&mut self, io: IoRequest, now: Nanos) -> Result<(), IoRequest>;

    /// Moves up to `max` finished I/Os into `out`; returns how many.
    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize;

    /// I/Os taken and not yet returned by `poll`.
    fn inflight(&self) -> usize;
}

/// Errors of bdev creation and management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BdevError {
    #[error("bdev '{0}' already exists")]
    Exists(String),
    #[error("uuid {uuid} is already the uuid of bdev '{name}'")]
    UuidExists { uuid: String, name: String },
    #[error("bdev '{0}' not found")]
    NotFound(String),
    #[error("bdev '{name}' is in use by {user}")]
    InUse { name: String, user: String },
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("{context}: {reason}")]
    Os { context: String, reason: String },
}

impl BdevError {
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> BdevError {
        BdevError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }

    pub fn os(context: impl Into<String>, err: std::io::Error) -> BdevError {
        BdevError::Os {
            context: context.into(),
            reason: err.to_string(),
        }
    }
}

/// Where a bdev's blocks live on this host, compared by identity rather than by path (two
/// paths, or a symlink, can name one file or device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    /// The path the bdev was created with, for messages.
    pub path: String,
    pub id: BackingId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingId {
    /// A block device, by its device number.
    Device(u64),
    /// A regular file, by its filesystem's device number and its inode.
    File { dev: u64, ino: u64 },
}

impl BackingId {
    /// The identity of what `meta` (a stat of an open file or of a path) describes.
    pub fn of(meta: &std::fs::Metadata) -> BackingId {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if meta.file_type().is_block_device() {
            BackingId::Device(meta.rdev())
        } else {
            BackingId::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }
}

/// Checks a block size the way every backend wants it: a power of two from 512 to 64 KiB.
pub fn check_block_size(block_size: u32) -> Result<(), BdevError> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::invalid(
            "block_size",
            format!("{block_size} is not a power of two from 512 to 65536"),
        ));
    }
    Ok(())
}

/// Checks a block count: at least one block.
/// The largest bdev in bytes (4 EiB): sizes and offsets in bytes stay far from overflow.
pub const MAX_BDEV_BYTES: u64 = 1 << 62;

pub fn check_num_blocks(num_blocks: u64, block_size: u32) -> Result<(), BdevError> {
    if num_blocks == 0 {
        return Err(BdevError::invalid("num_blocks", "must be at least 1"));
    }
    if num_blocks
        .checked_mul(block_size as u64)
        .is_none_or(|bytes| bytes > MAX_BDEV_BYTES)
    {
        return Err(BdevError::invalid(
            "num_blocks",
            format!("{num_blocks} blocks of {block_size} bytes is above {MAX_BDEV_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A random RFC 4122 version-4 UUID, for bdevs created without one.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks a caller-given UUID's shape (8-4-4-4-12 hex digits).
pub fn check_uuid(uuid: &str) -> Result<(), BdevError> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let ok = lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(BdevError::invalid(
            "uuid",
            format!("'{uuid}' is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
        ));
    }
    Ok(())
}

/// A shared handle on a bdev.
pub type BdevRef = Arc<dyn Bdev>;

/// A FIFO of finished I/Os for channels that complete at submission time: completions are
/// queued there and handed out by `poll`, never run from inside `submit`.
#[derive(Default)]
pub struct DoneQueue {
    queue: std::collections::VecDeque<Completion>,
}

impl DoneQueue {
    pub fn with_capacity(n: usize) -> DoneQueue {
        DoneQueue {
            queue: std::collections::VecDeque::with_capacity(n),
        }
    }

    #[inline]
    pub fn push(&mut self, io: IoRequest, status: IoStatus) {
        self.queue.push_back(Completion::new(io, status));
    }

    #[inline]
    pub fn drain_into(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        let n = max.min(self.queue.len());
        out.extend(self.queue.drain(..n));
        n
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests;
