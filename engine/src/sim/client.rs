//! The simulator's client: many overlapping requests in flight at once against the volume,
//! sent on seeded reactors, each completion checked against the model as it is reaped.
//!
//! Requests are small (1 to [`MAX_BLOCKS`] blocks) over a small volume, so most of them
//! overlap others in flight. A write's blocks carry its id ([`model::encode`]); a
//! write-zeroes or unmap leaves zeroes (the simulated device zeroes unmapped blocks). A
//! flush has no data; it must complete, and succeed unless the model allows a failure.

use super::model::{encode, Model};
use crate::bdev::{BdevId, IoStatus, IoType};
use crate::reactor::{Reactor, TaskId};
use crate::rng::Rng;
use crate::testkit::{request, Recorder};
use crate::time::Nanos;
use crate::DmaPool;
use std::collections::BTreeMap;

/// Largest request, in blocks.
pub const MAX_BLOCKS: u64 = 16;

/// A recorder task on each reactor (the client's, and the metadata writer's in `persist`).
pub(super) fn spawn_recorders(rs: &mut [Reactor]) -> Vec<(Recorder, TaskId)> {
    rs.iter_mut()
        .map(|r| {
            let rec = Recorder::default();
            let task = r.spawn(Box::new(rec.clone()));
            (rec, task)
        })
        .collect()
}

/// One request in flight.
pub struct Op {
    pub io_type: IoType,
    pub first: u64,
    pub n: u64,
    pub sent: Nanos,
}

/// Counts for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientStats {
    pub sent: u64,
    pub completed: u64,
    pub failed_allowed: u64,
    pub blocks_checked: u64,
}

pub struct Client {
    pub model: Model,
    pub inflight: BTreeMap<u64, Op>,
    pub stats: ClientStats,
    next_op: u64,
    pool: DmaPool,
    block_size: u64,
    num_blocks: u64,
    recorders: Vec<(Recorder, TaskId)>,
    /// `TIDEPOOL_SIM_WATCH=block`: print every request on that block (to diagnose a seed).
    watch: Option<u64>,
}

impl Client {
    /// A client with a recorder task on each reactor.
    pub fn new(
        rs: &mut [Reactor],
        block_size: u64,
        num_blocks: u64,
        max_inflight: usize,
    ) -> Client {
        let recorders = spawn_recorders(rs);
        Client {
            model: Model::new(num_blocks),
            inflight: BTreeMap::new(),
            stats: ClientStats::default(),
            next_op: 1,
            pool: DmaPool::new((MAX_BLOCKS * block_size) as usize, max_inflight + 8)
                .expect("the simulator's buffer pool"),
            block_size,
            num_blocks,
            recorders,
            watch: std::env::var("TIDEPOOL_SIM_WATCH")
                .ok()
                .and_then(|s| s.parse().ok()),
        }
    }

    /// Sends one random request on a random reactor at `now`.
    pub fn send(&mut self, rng: &mut Rng, rs: &mut [Reactor], vol: BdevId, now: Nanos) {
        let io_type = match rng.next_u64() % 100 {
            0..=39 => IoType::Read,
            40..=81 => IoType::Write,
            82..=86 => IoType::Flush,
            87..=93 => IoType::WriteZeroes,
            _ => IoType::Unmap,
        };
        let (first, n) = if io_type == IoType::Flush {
            (0, self.num_blocks)
        } else {
            let n = 1 + rng.next_u64() % MAX_BLOCKS;
            (rng.next_u64() % (self.num_blocks - n + 1), n)
        };
        let on = (rng.next_u64() % rs.len() as u64) as usize;
        self.send_on(rs, on, vol, now, io_type, first, n);
    }

    /// Sends `io_type` on `[first, first + n)` on reactor `on` at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn send_on(
        &mut self,
        rs: &mut [Reactor],
        on: usize,
        vol: BdevId,
        now: Nanos,
        io_type: IoType,
        first: u64,
        n: u64,
    ) {
        let op = self.next_op;
        self.next_op += 1;
        let bs = self.block_size as usize;
        let buf = match io_type {
            IoType::Read | IoType::Write => {
                let mut b = self.pool.take().expect("a buffer per request in flight");
                b.set_len(n as usize * bs);
                if io_type == IoType::Write {
                    for (i, block) in b.as_mut_slice().chunks_mut(bs).enumerate() {
                        encode(first + i as u64, op, block);
                    }
                }
                Some(b)
            }
            _ => None,
        };
        match io_type {
            IoType::Write => self.model.sent(op, op, first, n, now),
            IoType::WriteZeroes | IoType::Unmap => self.model.sent(op, 0, first, n, now),
            _ => {}
        }
        if self.watch.is_some_and(|b| first <= b && b < first + n) {
            println!(
                "sim t={now} ns: op {op} {} {first}+{n} sent on {on}",
                io_type.name()
            );
        }
        let task = self.recorders[on].1;
        let io = request(io_type, first, n as u32, buf, on as u16, task, op);
        self.inflight.insert(
            op,
            Op {
                io_type,
                first,
                n,
                sent: now,
            },
        );
        self.stats.sent += 1;
        rs[on].ctx().submit(vol, io);
    }

    /// The process crashed at `at`: the requests in flight are gone without an answer (a
    /// write among them may or may not have landed, like a failed one), and the client
    /// starts over with recorders on the new reactors `rs`.
    pub fn crash(&mut self, rs: &mut [Reactor], at: Nanos) {
        for (op, o) in std::mem::take(&mut self.inflight) {
            if matches!(
                o.io_type,
                IoType::Write | IoType::WriteZeroes | IoType::Unmap
            ) {
                self.model.ended(op, o.first, o.n, at, false);
            }
        }
        self.model.prune(None);
        self.recorders = spawn_recorders(rs);
    }

    /// Takes every completion the reactors recorded, in reactor order, and checks it:
    /// `allowed(op, at)` says whether the model allows `op` to fail.
    pub fn reap(&mut self, allowed: impl Fn(&Op, Nanos) -> bool) -> Result<(), String> {
        let done: Vec<_> = self
            .recorders
            .iter()
            .flat_map(|(r, _)| r.done.borrow_mut().drain(..).collect::<Vec<_>>())
            .collect();
        for d in done {
            let op = self
                .inflight
                .remove(&d.tag)
                .ok_or_else(|| format!("request {} completed twice, or was never sent", d.tag))?;
            self.stats.completed += 1;
            if self
                .watch
                .is_some_and(|b| op.first <= b && b < op.first + op.n)
            {
                println!(
                    "sim t={} ns: op {} {} ends {}",
                    d.at,
                    d.tag,
                    op.io_type.name(),
                    d.status
                );
            }
            let success = d.status == IoStatus::Success;
            if !success {
                if !allowed(&op, d.at) {
                    return Err(format!(
                        "a {} of blocks {}..{} sent at {} ns failed ({}) at {} ns, and no \
                         source extent under it failed meanwhile",
                        op.io_type.name(),
                        op.first,
                        op.first + op.n,
                        op.sent,
                        d.status,
                        d.at
                    ));
                }
                self.stats.failed_allowed += 1;
            }
            match op.io_type {
                IoType::Write | IoType::WriteZeroes | IoType::Unmap => {
                    self.model.ended(d.tag, op.first, op.n, d.at, success)
                }
                IoType::Read if success => {
                    let buf = d
                        .buf
                        .as_ref()
                        .ok_or("a read came back without its buffer")?;
                    self.model
                        .check_read(op.first, buf.as_slice(), self.block_size as usize, op.sent)
                        .map_err(|e| format!("request {}: {e}", d.tag))?;
                    self.stats.blocks_checked += op.n;
                }
                _ => {}
            }
        }
        let oldest = self
            .inflight
            .values()
            .filter(|o| o.io_type == IoType::Read)
            .map(|o| o.sent)
            .min();
        self.model.prune(oldest);
        Ok(())
    }
}
