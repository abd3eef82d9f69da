//! The load monitor: what each reactor measures inline in its poll loop, and the state table
//! it publishes to.
//!
//! Per I/O, a reactor updates a [`Window`] for the bdev channel that executes it (its device
//! load), and, for a volume request it took, one for the request's shard. Per poll it adds
//! the iteration's time to busy or idle. Every interval (100 ms by default,
//! [`StateTable::set_interval_ns`]) it closes its windows into a [`ReactorSample`] and
//! publishes it to its slot of the [`StateTable`]; `load_get_stats` and the balancer read the
//! table. Nothing on the I/O path locks, allocates or touches another core's memory.

mod table;
mod window;

pub use table::{
    Load, ReactorLoad, ReactorSample, ShardKey, Snapshot, StateTable, DEFAULT_INTERVAL_NS,
};
pub use window::{Pattern, Window};

use crate::reactor::ReactorId;
use crate::time::Nanos;
use std::sync::Arc;

/// A reactor's monitor state between samples (its windows live with its channels and
/// volumes).
pub(crate) struct Monitor {
    pub(crate) table: Arc<StateTable>,
    /// Start of the current window; `None` before the first poll.
    window_start: Option<Nanos>,
    busy_ns: Nanos,
    /// The previous poll: when it started and whether it did work.
    last_poll: Nanos,
    last_busy: bool,
    pub(crate) net_bytes: u64,
    pub(crate) taken: u64,
}

impl Monitor {
    pub(crate) fn new(table: Arc<StateTable>) -> Monitor {
        Monitor {
            table,
            window_start: None,
            busy_ns: 0,
            last_poll: 0,
            last_busy: false,
            net_bytes: 0,
            taken: 0,
        }
    }

    /// A poll starts at `now`: the previous one's time goes to busy if it did work. Returns
    /// whether the window is due to close.
    #[inline]
    pub(crate) fn poll_started(&mut self, now: Nanos) -> bool {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            self.last_poll = now;
            return false;
        };
        if self.last_busy {
            self.busy_ns += now.saturating_sub(self.last_poll);
        }
        self.last_poll = now;
        now.saturating_sub(start) >= self.table.interval_ns()
    }

    #[inline]
    pub(crate) fn poll_ended(&mut self, busy: bool) {
        self.last_busy = busy;
    }

    /// When the current window is due to close (for a parked reactor's deadline).
    pub(crate) fn due(&self) -> Option<Nanos> {
        self.window_start
            .map(|s| s.saturating_add(self.table.interval_ns()))
    }

    /// Closes the window at `now` with the reactor's per-entity windows and starts the next.
    pub(crate) fn close(
        &mut self,
        reactor: ReactorId,
        now: Nanos,
        executed: Window,
        bdevs: Vec<(crate::bdev::BdevId, Window)>,
        shards: Vec<(ShardKey, Window)>,
    ) -> ReactorSample {
        let start = self.window_start.unwrap_or(now);
        let sample = ReactorSample {
            reactor,
            at_ns: now,
            window_ns: now.saturating_sub(start).max(1),
            busy_ns: self.busy_ns,
            net_bytes: std::mem::take(&mut self.net_bytes),
            taken: std::mem::take(&mut self.taken),
            executed,
            bdevs,
            shards,
        };
        self.window_start = Some(now);
        self.busy_ns = 0;
        sample
    }
}
