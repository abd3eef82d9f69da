//! Step tests: reactors driven on the test thread, mostly with a fake clock.

use super::*;
use crate::bdev::{IoStatus, IoType};
use crate::config::create_bdev;
use crate::testkit::{reactors, request, Recorder};
use crate::DmaPool;
use serde_json::json;
use std::cell::RefCell;
use std::rc::Rc;

fn registry_with(method: &str, params: serde_json::Value) -> (Arc<BdevRegistry>, BdevId) {
    let reg = Arc::new(BdevRegistry::new());
    let (id, _) = create_bdev(&reg, method, params).unwrap();
    (reg, id)
}

fn null_registry() -> (Arc<BdevRegistry>, BdevId) {
    registry_with(
        "bdev_null_create",
        json!({"name": "Null0", "num_blocks": 1024, "block_size": 512}),
    )
}

#[test]
fn completions_run_after_the_submit_returns_not_inside_it() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(1, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    let pool = DmaPool::new(512, 4).unwrap();
    let mut buf = pool.take().unwrap();
    buf.set_len(512);
    rs[0]
        .ctx()
        .submit(bdev, request(IoType::Read, 3, 1, Some(buf), 0, task, 7));
    assert_eq!(rec.count(), 0, "nothing runs until the reactor polls");
    assert_eq!(rs[0].poll(10), PollResult::Busy);
    assert_eq!(rec.statuses(), [IoStatus::Success]);
    assert_eq!(rec.done.borrow()[0].tag, 7);
    assert_eq!(rs[0].poll(20), PollResult::Idle);
    assert!(rs[0].can_park());
}

#[test]
fn invalid_requests_complete_with_a_status_and_reach_no_device() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(1, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    let pool = DmaPool::new(4096, 4).unwrap();
    let ctx = rs[0].ctx();
    // Beyond the end, a buffer of the wrong size, a read without a buffer, a zero-length
    // write, and a bdev that does not exist.
    let mut short = pool.take().unwrap();
    short.set_len(100);
    let mut ok = pool.take().unwrap();
    ok.set_len(512);
    ctx.submit(bdev, request(IoType::Read, 1024, 1, Some(ok), 0, task, 1));
    ctx.submit(bdev, request(IoType::Read, 0, 1, Some(short), 0, task, 2));
    ctx.submit(bdev, request(IoType::Read, 0, 1, None, 0, task, 3));
    ctx.submit(bdev, request(IoType::Unmap, 0, 0, None, 0, task, 4));
    ctx.submit(99, request(IoType::Flush, 0, 0, None, 0, task, 5));
    rs[0].poll(1);
    assert_eq!(
        rec.statuses(),
        [
            IoStatus::Invalid,
            IoStatus::Invalid,
            IoStatus::Invalid,
            IoStatus::Invalid,
            IoStatus::Aborted
        ]
    );
    assert_eq!(
        pool.available(),
        2,
        "buffers of refused requests still come back"
    );
}

/// A task on reactor 0 issues I/O that reactor 1 executes; the completion comes back through
/// both inboxes, and nothing happens on a reactor that is not polled.
#[test]
fn cross_reactor_io_returns_to_its_origin() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(2, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    rs[0]
        .ctx()
        .submit_on(1, bdev, request(IoType::Flush, 0, 0, None, 0, task, 42));
    rs[0].poll(1);
    assert_eq!(rec.count(), 0);
    assert_eq!(
        rs[1].poll(2),
        PollResult::Busy,
        "reactor 1 executes the flush"
    );
    assert_eq!(rs[1].ctx().counters().ios_submitted, 1);
    assert_eq!(
        rec.count(),
        0,
        "the completion is still in reactor 0's inbox"
    );
    rs[0].poll(3);
    assert_eq!(rec.statuses(), [IoStatus::Success]);
    assert_eq!(rec.done.borrow()[0].at, 3);
}

/// A request goes to the other reactor in the lane's compact form (its sender keeps the
/// rest): it is executed there as it was given (the data lands where it should), and its
/// completion comes back with the request as it was sent and its buffer, and frees the slot.
#[test]
fn a_request_sent_to_another_reactor_comes_back_as_it_was_sent() {
    let (reg, bdev) = registry_with(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 64, "block_size": 512}),
    );
    let mut rs = reactors(2, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    let pool = DmaPool::new(1024, 2).unwrap();
    let mut data = pool.take().unwrap();
    data.set_len(1024);
    data.as_mut_slice().fill(0xa5);
    rs[0].ctx().submit_on(
        1,
        bdev,
        request(IoType::Write, 5, 2, Some(data), 0, task, 42),
    );
    assert_eq!(rs[0].ctx().remote.in_flight(), 1);
    let mut now = 0;
    while rec.count() < 1 {
        now += 1;
        assert!(now < 100, "the write did not come back");
        rs[0].poll(now);
        rs[1].poll(now);
    }
    {
        let done = &rec.done.borrow()[0];
        assert_eq!(done.status, IoStatus::Success);
        assert_eq!(
            (done.tag, done.io_type, done.offset_blocks, done.num_blocks),
            (42, IoType::Write, 5, 2)
        );
        assert_eq!(done.buf.as_ref().map(|b| b.len()), Some(1024));
    }
    assert_eq!(rs[0].ctx().remote.in_flight(), 0, "the slot is free again");
    // Read blocks 4..8 here: only 5 and 6 were written.
    let mut back = pool.take().unwrap();
    back.set_len(1024);
    rs[0]
        .ctx()
        .submit(bdev, request(IoType::Read, 4, 2, Some(back), 0, task, 43));
    rs[0].poll(now + 1);
    let done = rec.done.borrow_mut().pop().unwrap();
    let got = done.buf.unwrap();
    assert!(got.as_slice()[..512].iter().all(|&b| b == 0), "block 4");
    assert!(got.as_slice()[512..].iter().all(|&b| b == 0xa5), "block 5");
}

/// Requests cross in a packed form that holds at most 65,535 blocks; a longer one (here
/// 65,536) goes whole (boxed). Both come back as sent, to the reactor that sent them,
/// whichever incoming lane of the executing reactor they came on (three reactors: lanes from
/// a lower and a higher peer).
#[test]
fn long_and_short_requests_cross_between_any_two_of_three_reactors() {
    const LONG: u32 = 65_536;
    let (reg, bdev) = registry_with(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2 * LONG, "block_size": 512}),
    );
    let mut rs = reactors(3, &reg, ReactorConfig::default());
    let recs: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let tasks: Vec<TaskId> = (0..3)
        .map(|i| rs[i].spawn(Box::new(recs[i].clone())))
        .collect();
    let pool = DmaPool::new(LONG as usize * 512, 4).unwrap();
    // (sender, executor, first block, blocks, fill): short writes from a higher and from a
    // lower peer, and a long one.
    let writes = [
        (2, 1, LONG, 1, 0xc3),
        (0, 2, LONG + 1, 1, 0x3c),
        (1, 0, 0, LONG, 0x5a),
    ];
    for (tag, &(from, to, at, n, fill)) in writes.iter().enumerate() {
        let mut data = pool.take().unwrap();
        data.set_len(n as usize * 512);
        data.as_mut_slice().fill(fill);
        let io = request(
            IoType::Write,
            at as u64,
            n,
            Some(data),
            from,
            tasks[from as usize],
            tag as u64,
        );
        rs[from as usize].ctx().submit_on(to, bdev, io);
    }
    let mut now = 0;
    while recs.iter().map(Recorder::count).sum::<usize>() < writes.len() {
        now += 1;
        assert!(now < 100, "the writes did not come back");
        for r in rs.iter_mut() {
            r.poll(now);
        }
    }
    for (tag, &(from, _, at, n, _)) in writes.iter().enumerate() {
        let done = &recs[from as usize].done.borrow()[0];
        let back = (done.status, done.tag, done.offset_blocks, done.num_blocks);
        assert_eq!(back, (IoStatus::Success, tag as u64, at as u64, n));
    }
    for r in rs.iter_mut() {
        assert_eq!(r.ctx().remote.in_flight(), 0, "every slot is free again");
    }
    // Read the long write's last block and the two short ones back on reactor 1.
    let mut got = pool.take().unwrap();
    got.set_len(3 * 512);
    let io = request(IoType::Read, LONG as u64 - 1, 3, Some(got), 1, tasks[1], 9);
    rs[1].ctx().submit(bdev, io);
    rs[1].poll(now + 1);
    let done = recs[1].done.borrow_mut().pop().unwrap();
    let got = done.buf.unwrap();
    for (block, fill) in [0x5a, 0xc3, 0x3c].into_iter().enumerate() {
        let bytes = &got.as_slice()[block * 512..(block + 1) * 512];
        assert!(
            bytes.iter().all(|&b| b == fill),
            "block {block} of the read"
        );
    }
}

/// A request pushed into a reactor's inbox that names another reactor as its origin has no
/// remote slot: its completion still reaches that reactor's task, whole.
#[test]
fn a_request_from_outside_naming_another_reactor_completes_on_that_reactor() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(2, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    let io = request(IoType::Unmap, 8, 4, None, 0, task, 77);
    assert!(rs[1].inbox().push(Message::Submit { bdev, io }).is_ok());
    rs[1].poll(1);
    assert_eq!(rec.count(), 0);
    rs[0].poll(2);
    let done = &rec.done.borrow()[0];
    assert_eq!(done.status, IoStatus::Success);
    assert_eq!((done.tag, done.offset_blocks, done.num_blocks), (77, 8, 4));
}

/// A request or completion pushed from outside whose origin claims a task id the engine keeps
/// for its own I/O (a remote slot, the router) is dropped: it would complete into a slot it
/// does not own. Its buffer goes back to its pool, and the reactors go on.
#[test]
fn a_message_from_outside_claiming_the_engines_own_task_ids_is_dropped() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(2, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    let pool = DmaPool::new(512, 4).unwrap();
    let with_buf = |task_id: TaskId| {
        let mut buf = pool.take().unwrap();
        buf.set_len(512);
        request(IoType::Read, 1, 1, Some(buf), 0, task_id, 5)
    };
    for reserved in [remote::REMOTE_TASK, router::ROUTER_TASK] {
        let io = with_buf(reserved);
        assert!(rs[1].inbox().push(Message::Submit { bdev, io }).is_ok());
        let c = Completion::new(with_buf(reserved), IoStatus::Success);
        assert!(rs[0].inbox().push(Message::Complete(c)).is_ok());
    }
    for now in 1..4 {
        rs[0].poll(now);
        rs[1].poll(now);
    }
    assert_eq!(pool.available(), 4, "every buffer came back");
    // The reactors still serve a request from a task.
    let io = with_buf(task);
    rs[0].ctx().submit_on(1, bdev, io);
    for now in 4..8 {
        rs[0].poll(now);
        rs[1].poll(now);
    }
    assert_eq!(rec.statuses(), [IoStatus::Success]);
}

/// With two-slot inboxes and lanes, many messages wait in the sender's outbox and all
/// arrive, in order.
#[test]
fn full_peer_lane_backs_up_in_order_without_loss() {
    let (reg, bdev) = null_registry();
    let config = ReactorConfig {
        inbox_capacity: 2,
        ..ReactorConfig::default()
    };
    let mut rs = reactors(2, &reg, config);
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    for tag in 0..50 {
        rs[0]
            .ctx()
            .submit_on(1, bdev, request(IoType::Flush, 0, 0, None, 0, task, tag));
    }
    assert!(
        !rs[0].can_park(),
        "a reactor with messages waiting to go out must not park"
    );
    let mut now = 0;
    while rec.count() < 50 {
        now += 1;
        assert!(now < 10_000, "messages lost");
        rs[0].poll(now);
        rs[1].poll(now);
    }
    let tags: Vec<u64> = rec.done.borrow().iter().map(|d| d.tag).collect();
    assert_eq!(tags, (0..50).collect::<Vec<_>>());
}

/// A task that counts timer firings at the fake time they ran.
struct TimerTask {
    fired: Rc<RefCell<Vec<(TimerId, Nanos)>>>,
}

impl Task for TimerTask {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        ctx.add_timer(id, 100, 50); // periodic, from t=100
        ctx.add_timer(id, 130, 0); // once, at t=130
    }
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_timer(&mut self, ctx: &mut Ctx, timer: TimerId) {
        self.fired.borrow_mut().push((timer, ctx.now()));
    }
}

#[test]
fn timers_fire_on_the_fake_clock() {
    let (reg, _) = null_registry();
    let mut rs = reactors(1, &reg, ReactorConfig::default());
    let fired = Rc::new(RefCell::new(Vec::new()));
    rs[0].spawn(Box::new(TimerTask {
        fired: fired.clone(),
    }));
    assert_eq!(rs[0].next_timer_due(), Some(100));
    assert_eq!(rs[0].poll(99), PollResult::Idle);
    assert!(fired.borrow().is_empty());
    rs[0].poll(100);
    rs[0].poll(140);
    rs[0].poll(150);
    // Far behind: a periodic timer fires once and skips the missed periods.
    rs[0].poll(1000);
    let got: Vec<(TimerId, Nanos)> = fired.borrow().clone();
    assert_eq!(got, [(0, 100), (1, 140), (0, 150), (0, 1000)]);
    assert_eq!(rs[0].next_timer_due(), Some(1050));
}

/// Ping-pong between tasks on two reactors through `Notify`, stepped by hand.
struct Pinger {
    peer: (ReactorId, TaskId),
    left: u64,
    seen: Rc<RefCell<Vec<u64>>>,
}

impl Task for Pinger {
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_notify(&mut self, ctx: &mut Ctx, value: u64) {
        self.seen.borrow_mut().push(value);
        if self.left > 0 {
            self.left -= 1;
            ctx.notify(self.peer.0, self.peer.1, value + 1);
        }
    }
}

#[test]
fn notify_ping_pong_between_reactors() {
    let (reg, _) = null_registry();
    let mut rs = reactors(2, &reg, ReactorConfig::default());
    let a_seen = Rc::new(RefCell::new(Vec::new()));
    let b_seen = Rc::new(RefCell::new(Vec::new()));
    let a = rs[0].spawn(Box::new(Pinger {
        peer: (1, 0),
        left: 3,
        seen: a_seen.clone(),
    }));
    let b = rs[1].spawn(Box::new(Pinger {
        peer: (0, a),
        left: 3,
        seen: b_seen.clone(),
    }));
    assert_eq!(b, 0);
    rs[0].ctx().notify(1, b, 0);
    for now in 1..20 {
        rs[0].poll(now);
        rs[1].poll(now);
    }
    assert_eq!(*b_seen.borrow(), [0, 2, 4, 6]);
    assert_eq!(*a_seen.borrow(), [1, 3, 5]);
}

#[test]
fn finished_tasks_drop_late_completions_and_their_timers() {
    let (reg, bdev) = null_registry();
    let mut rs = reactors(1, &reg, ReactorConfig::default());
    let rec = Recorder::default();
    let task = rs[0].spawn(Box::new(rec.clone()));
    rs[0]
        .ctx()
        .submit(bdev, request(IoType::Flush, 0, 0, None, 0, task, 1));
    rs[0].ctx().add_timer(task, 5, 5);
    rs[0].ctx().finish(task);
    rs[0].spawn(Box::new(Recorder::default())); // settles the finish
    assert_eq!(rs[0].task_count(), 1);
    rs[0].poll(10);
    assert_eq!(rec.count(), 0);
}
