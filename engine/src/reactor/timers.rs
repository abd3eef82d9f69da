//! Per-reactor timers: a min-heap of due times. A timer belongs to a task; cancelling the
//! task cancels its timers. Periodic timers that fall behind skip missed periods rather than
//! fire in a burst.

use super::TaskId;
use crate::time::Nanos;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Handle of a timer on its reactor.
pub type TimerId = u32;

struct TimerSpec {
    task: TaskId,
    period: Nanos,
}

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Nanos, TimerId)>>,
    specs: Vec<Option<TimerSpec>>,
    free: Vec<TimerId>,
}

impl Timers {
    pub fn add(&mut self, task: TaskId, first_due: Nanos, period: Nanos) -> TimerId {
        let spec = Some(TimerSpec { task, period });
        let id = match self.free.pop() {
            Some(id) => {
                self.specs[id as usize] = spec;
                id
            }
            None => {
                self.specs.push(spec);
                (self.specs.len() - 1) as TimerId
            }
        };
        self.heap.push(Reverse((first_due, id)));
        id
    }

    pub fn cancel(&mut self, id: TimerId) {
        // The heap entry stays and is skipped when it surfaces; the id is reusable only after
        // that, so a stale entry cannot fire a new timer.
        if let Some(spec) = self.specs.get_mut(id as usize) {
            *spec = None;
        }
    }

    pub fn cancel_task(&mut self, task: TaskId) {
        for spec in self.specs.iter_mut() {
            if spec.as_ref().is_some_and(|s| s.task == task) {
                *spec = None;
            }
        }
    }

    /// Pops one due timer: (timer, task).
    pub fn pop_due(&mut self, now: Nanos) -> Option<(TimerId, TaskId)> {
        loop {
            let &Reverse((due, id)) = self.heap.peek()?;
            if due > now {
                return None;
            }
            self.heap.pop();
            let Some(spec) = self.specs[id as usize].as_ref() else {
                self.free.push(id);
                continue;
            };
            let task = spec.task;
            if spec.period > 0 {
                let mut next = due + spec.period;
                if next <= now {
                    next = now + spec.period;
                }
                self.heap.push(Reverse((next, id)));
            } else {
                self.specs[id as usize] = None;
                self.free.push(id);
            }
            return Some((id, task));
        }
    }

    pub fn next_due(&self) -> Option<Nanos> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }
}
