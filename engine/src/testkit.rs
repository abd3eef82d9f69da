//! Helpers for the engine's own tests: a task that records completions, request builders,
//! and a driver that steps reactors until a condition holds or a deadline passes.

use crate::bdev::{BdevRegistry, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::reactor::{Ctx, Reactor, ReactorConfig, Task, TaskId};
use crate::time::Nanos;
use crate::DmaBuf;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One recorded completion.
pub struct Done {
    pub tag: u64,
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u32,
    pub status: IoStatus,
    pub buf: Option<DmaBuf>,
    /// `ctx.now()` when the completion ran.
    pub at: Nanos,
}

/// A task that only records its completions.
#[derive(Clone, Default)]
pub struct Recorder {
    pub done: Rc<RefCell<Vec<Done>>>,
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.done.borrow().len()
    }

    pub fn statuses(&self) -> Vec<IoStatus> {
        self.done.borrow().iter().map(|d| d.status).collect()
    }
}

impl Task for Recorder {
    fn on_complete(&mut self, ctx: &mut Ctx, c: Completion) {
        self.done.borrow_mut().push(Done {
            tag: c.io.origin.tag,
            io_type: c.io.io_type,
            offset_blocks: c.io.offset_blocks,
            num_blocks: c.io.num_blocks,
            status: c.status,
            buf: c.io.buf,
            at: ctx.now(),
        });
    }
}

pub fn request(
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u32,
    buf: Option<DmaBuf>,
    reactor: u16,
    task: TaskId,
    tag: u64,
) -> IoRequest {
    IoRequest::new(
        io_type,
        offset_blocks,
        num_blocks,
        buf,
        IoOrigin { reactor, task, tag },
    )
}

/// `n` reactors wired to each other, sharing `registry`.
pub fn reactors(n: usize, registry: &Arc<BdevRegistry>, config: ReactorConfig) -> Vec<Reactor> {
    let inboxes = Reactor::inboxes(n, config.inbox_capacity);
    let state = crate::load::StateTable::new(n);
    crate::ring::Lanes::mesh(n, config.inbox_capacity)
        .into_iter()
        .enumerate()
        .map(|(i, lanes)| {
            Reactor::new(
                i as u16,
                inboxes.clone(),
                lanes,
                registry.clone(),
                config.clone(),
                state.clone(),
            )
        })
        .collect()
}

/// Polls every reactor in turn at the real clock until `done()` or 10 s pass.
pub fn run_until(reactors: &mut [Reactor], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 10 s"
        );
        for r in reactors.iter_mut() {
            r.poll(crate::time::now());
        }
    }
}

/// A zero-filled file of `len` bytes in this test process's scratch directory.
pub fn temp_file(name: &str, len: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidepool-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    path
}
