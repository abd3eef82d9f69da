//! The `error` bdev (SPDK's `EE_<base>`): passes I/O to its base bdev and, on command, fails
//! or holds the next N I/Os of a chosen type.
//!
//! - `failure`: the next N matching I/Os complete with an I/O error without reaching the base.
//! - `pending`: the next N matching I/Os are held, neither done nor failed, until the injection
//!   is cleared (`io_type: clear`); then they go to the base and complete normally. This models
//!   a device that stalls and recovers.
//!
//! The injection state is shared by every reactor's channel and counted with atomics, so
//! "the next N" is exact across reactors: each injected I/O is one successful decrement.

use super::{
    check_uuid, Bdev, BdevChannel, BdevError, BdevInfo, BdevRef, Completion, DoneQueue, IoRequest,
    IoStatus, IoType,
};
use crate::time::Nanos;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// SPDK's product name for this backend; `bdev_get_bdevs` shows it and delete methods check it.
pub const PRODUCT_NAME: &str = "Error Injection Disk";

/// `bdev_error_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorCreateParams {
    pub base_name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// What an injection does to the I/Os it catches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Failure,
    Pending,
}

/// Which I/Os an injection applies to (SPDK's `io_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectTarget {
    Read,
    Write,
    Unmap,
    Flush,
    WriteZeroes,
    All,
    Clear,
}

/// `bdev_error_inject_error` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectParams {
    pub name: String,
    pub io_type: InjectTarget,
    pub error_type: ErrorKind,
    #[serde(default = "one")]
    pub num: u32,
}

fn one() -> u32 {
    1
}

const KIND_FAILURE: u8 = 1;
const KIND_PENDING: u8 = 2;

#[derive(Default)]
struct TypeInjection {
    kind: AtomicU8,
    remaining: AtomicU32,
    /// Matching I/Os let through before the injection applies ([`Injection::inject_after`]).
    skip: AtomicU32,
}

/// The injection state of one error bdev, shared by its channels.
#[derive(Default)]
pub struct Injection {
    per_type: [TypeInjection; 5],
    /// Bumped by every clear; a channel that sees a new value releases its held I/Os.
    clears: AtomicU64,
}

impl Injection {
    /// Arms (or clears) an injection.
    pub fn inject(&self, target: InjectTarget, kind: ErrorKind, num: u32) {
        self.inject_after(target, kind, 0, num)
    }

    /// Arms an injection that lets the next `skip` matching I/Os through and then catches
    /// `num` (tests: "fail the second write from now"; the RPC has no such parameter).
    pub fn inject_after(&self, target: InjectTarget, kind: ErrorKind, skip: u32, num: u32) {
        let types: &[IoType] = match target {
            InjectTarget::Read => &[IoType::Read],
            InjectTarget::Write => &[IoType::Write],
            InjectTarget::Unmap => &[IoType::Unmap],
            InjectTarget::Flush => &[IoType::Flush],
            InjectTarget::WriteZeroes => &[IoType::WriteZeroes],
            InjectTarget::All => &IoType::ALL,
            InjectTarget::Clear => {
                for t in &self.per_type {
                    t.remaining.store(0, Ordering::Release);
                }
                self.clears.fetch_add(1, Ordering::AcqRel);
                return;
            }
        };
        let code = match kind {
            ErrorKind::Failure => KIND_FAILURE,
            ErrorKind::Pending => KIND_PENDING,
        };
        for &t in types {
            let slot = &self.per_type[t as usize];
            // Kind first: a channel only reads the kind after it won a decrement of a count
            // stored after it (Release/Acquire on `remaining`).
            slot.kind.store(code, Ordering::Relaxed);
            slot.skip.store(skip, Ordering::Relaxed);
            slot.remaining.store(num, Ordering::Release);
        }
    }

    /// The injections still armed, by I/O type: `{"write": {"kind": "pending", "remaining":
    /// 1}}`. A test sees an I/O caught by watching its count go down (a `pending` one is held
    /// from then on).
    pub fn armed_json(&self) -> serde_json::Value {
        let mut armed = serde_json::Map::new();
        for t in IoType::ALL {
            let slot = &self.per_type[t as usize];
            let remaining = slot.remaining.load(Ordering::Acquire);
            if remaining > 0 {
                let kind = match slot.kind.load(Ordering::Relaxed) {
                    KIND_PENDING => "pending",
                    _ => "failure",
                };
                armed.insert(
                    t.name().to_string(),
                    json!({"kind": kind, "remaining": remaining}),
                );
            }
        }
        serde_json::Value::Object(armed)
    }

    /// If an injection covers this I/O, consumes one unit of it and says what to do.
    #[inline]
    fn take(&self, t: IoType) -> Option<ErrorKind> {
        let slot = &self.per_type[t as usize];
        if slot.remaining.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let skipped = slot
            .skip
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1));
        if skipped.is_ok() {
            return None;
        }
        slot.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .ok()?;
        Some(match slot.kind.load(Ordering::Relaxed) {
            KIND_PENDING => ErrorKind::Pending,
            _ => ErrorKind::Failure,
        })
    }

    /// Injections still armed for this type.
    pub fn remaining(&self, t: IoType) -> u32 {
        self.per_type[t as usize].remaining.load(Ordering::Acquire)
    }
}

pub struct ErrorBdev {
    info: BdevInfo,
    base: BdevRef,
    injection: Arc<Injection>,
}

impl ErrorBdev {
    /// Wraps `base`; the new bdev is `EE_<base name>`.
    pub fn create(p: &ErrorCreateParams, base: BdevRef) -> Result<ErrorBdev, BdevError> {
        if let Some(u) = &p.uuid {
            check_uuid(u)?;
        }
        let b = base.info();
        let info = BdevInfo::stacked_on(b, format!("EE_{}", b.name), PRODUCT_NAME, p.uuid.as_ref());
        Ok(ErrorBdev {
            info,
            base,
            injection: Arc::new(Injection::default()),
        })
    }

    pub fn injection(&self) -> &Arc<Injection> {
        &self.injection
    }
}

impl Bdev for ErrorBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let base = self.base.open_channel()?;
        Ok(Box::new(ErrorChannel {
            base,
            injection: Arc::clone(&self.injection),
            done: DoneQueue::with_capacity(64),
            held: VecDeque::new(),
        }))
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }

    fn driver_specific(&self) -> serde_json::Value {
        json!({"error": {"base_bdev": self.base.info().name,
            "armed": self.injection.armed_json()}})
    }

    fn config_entry(&self) -> serde_json::Value {
        json!({"method": "bdev_error_create", "params": {
            "base_name": self.base.info().name, "uuid": self.info.uuid}})
    }
}

struct ErrorChannel {
    base: Box<dyn BdevChannel>,
    injection: Arc<Injection>,
    done: DoneQueue,
    /// I/Os caught by a `pending` injection, each with the clear count when it was caught:
    /// a clear releases only what was held before it (a `pending` injected right after a
    /// clear holds its I/O even if this channel has not polled since). Bounded by the I/Os
    /// its submitters have in flight.
    held: VecDeque<(u64, IoRequest)>,
}

impl BdevChannel for ErrorChannel {
    fn submit(&mut self, io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        // Read before taking: a clear zeroes the counts before it bumps `clears`, so an I/O
        // caught here is released by any clear this load did not see.
        let clears = self.injection.clears.load(Ordering::Acquire);
        match self.injection.take(io.io_type) {
            Some(ErrorKind::Failure) => {
                self.done.push(io, IoStatus::Failed { errno: libc::EIO });
                Ok(())
            }
            Some(ErrorKind::Pending) => {
                self.held.push_back((clears, io));
                Ok(())
            }
            None => self.base.submit(io, now),
        }
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        let clears = self.injection.clears.load(Ordering::Acquire);
        // Release, in order, what was held before the latest clear; what the base cannot
        // take now waits for the next poll.
        while let Some((held_at, io)) = self.held.pop_front() {
            if held_at >= clears {
                self.held.push_front((held_at, io));
                break;
            }
            if let Err(io) = self.base.submit(io, now) {
                self.held.push_front((held_at, io));
                break;
            }
        }
        let n = self.done.drain_into(max, out);
        n + self.base.poll(now, max - n, out)
    }

    fn inflight(&self) -> usize {
        self.base.inflight() + self.done.len() + self.held.len()
    }
}
