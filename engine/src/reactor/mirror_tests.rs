//! Mirrored writes sent in parallel (issue 26): a write's target half goes out without
//! waiting for its source half, a source failure under a landed target half restarts the
//! copy, and a copy out of mirror buffers falls back to one half after the other. The source
//! here is an error bdev (EE_M1) that holds or fails the writes it is told to. Then the time
//! limit on an undecided copy's target halves, on `copy_rig`, whose target (EE_M2) holds
//! them.

use super::*;
use crate::bdev::error::{ErrorKind, InjectTarget, Injection};

/// `copy_rig` with the copied shard's source wrapped in an error bdev: the rig, the plain
/// target M2, and the source's injection.
fn source_rig() -> (Rig, BdevId, Arc<Injection>) {
    let rig = rig_with(2, 4, |reg, m| {
        if m == 1 {
            create_bdev(reg, "bdev_error_create", json!({"base_name": "M1"})).unwrap();
        }
    });
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let m2 = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let source = rig.reg.lookup("EE_M1").unwrap().1;
    let injection = Arc::clone(
        source
            .downcast_ref::<crate::bdev::error::ErrorBdev>()
            .unwrap()
            .injection(),
    );
    (rig, m2, injection)
}

/// Whether `[at, at + n)` of the copy's target M2 holds write `seed` of the copied shard's
/// blocks `[within, within + n)`.
fn on_target(rig: &mut Rig, m2: BdevId, within: u64, n: u64, seed: u64) -> bool {
    let first = COPIED_SHARD * SHARD;
    let data = rig.read(m2, TARGET_AT + within, n);
    data.chunks(BS as usize).enumerate().all(|(i, b)| {
        b.iter()
            .all(|&x| x == pattern(first + within + i as u64, seed))
    })
}

/// A source that holds a mirrored write: its target half has landed meanwhile, and the
/// client waits for the source. (One half after the other, the target saw nothing until the
/// source answered.)
#[test]
fn a_mirrored_write_reaches_the_target_while_its_source_half_is_out() {
    let (mut rig, m2, source) = source_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, m2);
    let first = COPIED_SHARD * SHARD;
    source.inject(InjectTarget::Write, ErrorKind::Pending, 1);
    rig.submit(1, vol, IoType::Write, first + 10, 4, 31);
    poll_rounds(&mut rig, 20);
    assert!(
        on_target(&mut rig, m2, 10, 4, 31),
        "the target half waited for the source half"
    );
    assert_eq!(rig.done(), 0, "answered before its source half is back");
    source.inject(InjectTarget::Clear, ErrorKind::Pending, 0);
    rig.settle(1);
    rig.all_success();
    rig.release();
    rig.check(first + 10, 4, 31);
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// The source fails a mirrored write whose target half landed: the target holds data the
/// source does not, so the copy restarts (saying why), the client gets the source's failure,
/// and once copied again the target equals the source. (One half after the other, the
/// target half was never sent: no restart was needed, and this one was not made.)
#[test]
fn a_source_failure_under_a_landed_target_half_restarts_the_copy() {
    let (mut rig, m2, source) = source_rig();
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, m2);
    let first = COPIED_SHARD * SHARD;
    rig.submit(1, vol, IoType::Write, first, SHARD, 1);
    rig.settle(1);
    rig.all_success();
    rig.release();
    source.inject(InjectTarget::Write, ErrorKind::Failure, 1);
    rig.submit(1, vol, IoType::Write, first + 20, 3, 2);
    rig.settle(2);
    assert!(
        !rig.rec[1].0.statuses()[1].is_success(),
        "the source failed it"
    );
    let s = status.lock().unwrap().clone();
    assert_eq!(s.restarts, 1, "{s:?}");
    assert!(
        matches!(
            s.last_error,
            Some(crate::reactor::CopyFailure::MirrorSource { .. })
        ),
        "{s:?}"
    );
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    rig.release();
    let on_source = rig.read(rig.members[1], BASE, SHARD);
    let copied = rig.read(m2, TARGET_AT, SHARD);
    assert!(on_source == copied, "target differs from source");
    assert!(on_target(&mut rig, m2, 20, 3, 1), "the failed write stayed");
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// While undecided, a source failure under a landed target half fails the client and does
/// not restart the copy (it must stay whole: its placement may still land).
#[test]
fn an_undecided_copy_fails_a_write_its_source_failed_and_is_not_restarted() {
    let (mut rig, m2, source) = source_rig();
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, m2);
    assert!(rig.rs[1]
        .ctx()
        .keep_copy_undecided(vol, COPIED_SHARD as u32));
    source.inject(InjectTarget::Write, ErrorKind::Failure, 1);
    rig.submit(1, vol, IoType::Write, COPIED_SHARD * SHARD + 4, 2, 3);
    rig.settle(1);
    assert!(!rig.rec[1].0.statuses()[0].is_success());
    let s = status.lock().unwrap().clone();
    assert_eq!(s.state, crate::reactor::CopyState::Copied, "{s:?}");
    assert_eq!(s.restarts, 0, "{s:?}");
    assert!(
        matches!(
            s.last_error,
            Some(crate::reactor::CopyFailure::MirrorSource { .. })
        ),
        "{s:?}"
    );
    rig.release();
    rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32);
}

/// More writes in flight than mirror buffers: the first `MIRROR_BUFS` go in parallel (their
/// target halves land while the source holds them), the next waits for its source half
/// before its target half goes, and all complete, on both places.
#[test]
fn a_copy_out_of_mirror_buffers_mirrors_one_half_after_the_other() {
    use crate::reactor::copy::mirror::MIRROR_BUFS;
    let (mut rig, m2, source) = source_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, m2);
    let first = COPIED_SHARD * SHARD;
    let n = MIRROR_BUFS as u64 + 1;
    assert!(n * 4 <= SHARD);
    source.inject(InjectTarget::Write, ErrorKind::Pending, n as u32);
    for i in 0..n {
        rig.submit(1, vol, IoType::Write, first + i * 4, 2, 40 + i);
    }
    poll_rounds(&mut rig, 20);
    assert_eq!(rig.done(), 0, "answered before the source");
    for i in 0..n - 1 {
        assert!(on_target(&mut rig, m2, i * 4, 2, 40 + i), "write {i}");
    }
    let last = n - 1;
    assert!(
        !on_target(&mut rig, m2, last * 4, 2, 40 + last),
        "without a mirror buffer, the target half waits for the source half"
    );
    source.inject(InjectTarget::Clear, ErrorKind::Pending, 0);
    rig.settle(n as usize);
    rig.all_success();
    rig.release();
    for i in 0..n {
        rig.check(first + i * 4, 2, 40 + i);
        assert!(on_target(&mut rig, m2, i * 4, 2, 40 + i), "write {i}");
    }
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// A copy stopped while a parallel mirror's source half is out and its target half is back:
/// the client is answered only when its source half is, with the source's status.
#[test]
fn a_copy_that_gives_up_answers_no_client_before_its_source_half_is_back() {
    let (mut rig, m2, source) = source_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, m2);
    let block = COPIED_SHARD * SHARD + 30;
    source.inject(InjectTarget::Write, ErrorKind::Pending, 1);
    rig.submit(1, vol, IoType::Write, block, 2, 12);
    poll_rounds(&mut rig, 20);
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
    poll_rounds(&mut rig, 20);
    assert_eq!(rig.done(), 0, "answered before its source half is back");
    source.inject(InjectTarget::Clear, ErrorKind::Pending, 0);
    rig.settle(1);
    rig.all_success();
    rig.release();
    rig.check(block, 2, 12);
    poll_rounds(&mut rig, 20);
    // (`check`'s reads take their own completions off the recorder.)
    assert_eq!(rig.done(), 1, "no second answer");
}

/// Polls every reactor on the real clock until `done()` holds or `ns` have passed; returns
/// `done()`.
fn poll_for(rig: &mut Rig, ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_nanos(ns);
    while !done() && std::time::Instant::now() < until {
        poll_rounds(rig, 1);
    }
    done()
}

/// Block of the copied shard that the held write (seed 5) starts at; it covers two.
const HELD_AT: u64 = 7;

/// `copy_rig`'s copy run to `Copied` and made undecided, with a write to blocks
/// `HELD_AT..HELD_AT + 2` of the shard (seed 5) whose target half the target holds: the
/// rig, the raw target M2 and the copy's status.
fn undecided_with_a_held_write() -> (Rig, BdevId, crate::reactor::CopyHandle) {
    let (mut rig, m2, ee) = copy_rig();
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, ee);
    assert!(rig.rs[1]
        .ctx()
        .keep_copy_undecided(vol, COPIED_SHARD as u32));
    hold_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, COPIED_SHARD * SHARD + HELD_AT, 2, 5);
    (rig, m2, status)
}

/// An undecided copy whose target holds a mirrored write: the client waits for it (the
/// write must be on both places to be acknowledged), but not past `TARGET_ANSWER_NS`: then
/// it fails with `TARGET_SILENT`, never with success. The copy is neither restarted nor
/// abandoned (it stays whole and mirroring, saying why), and the held write is still out.
/// The client used to wait as long as the target did, with no limit of its own.
#[test]
fn an_undecided_copy_fails_a_write_its_target_holds_past_the_limit() {
    use crate::reactor::copy::{mirror::TARGET_SILENT, TARGET_ANSWER_NS};
    let (mut rig, _, status) = undecided_with_a_held_write();
    let vol = rig.vol;
    let rec = rig.rec[1].0.clone();
    assert!(
        !poll_for(&mut rig, TARGET_ANSWER_NS * 4 / 5, || rec.count() > 0),
        "answered before the limit: {:?}",
        rec.statuses()
    );
    assert!(
        poll_for(&mut rig, TARGET_ANSWER_NS * 10, || rec.count() > 0),
        "still waiting for its target well past the limit"
    );
    assert_eq!(rec.statuses(), vec![TARGET_SILENT]);
    let s = status.lock().unwrap().clone();
    assert_eq!(s.state, crate::reactor::CopyState::Copied, "{s:?}");
    assert_eq!(s.restarts, 0, "{s:?}");
    assert!(!s.target_stalled, "{s:?}");
    assert!(
        matches!(s.last_error, Some(CopyFailure::TargetSilent { .. })),
        "{s:?}"
    );
    assert!(rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(!rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    assert_eq!(rec.count(), 1, "no second answer to the held write");
    rig.release();
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// Behind that held write, a write overlapping it waits (in `deferred`); once the limit
/// has passed, it fails too, for it would wait as long as the target (it was never sent,
/// so no block changed), and a new overlapping write fails at once while the held write's
/// slot lives. A write elsewhere in the shard is mirrored as usual: acknowledged, on both
/// places. The overlapping writes used to wait for the target, with no limit.
#[test]
fn writes_behind_a_stalled_undecided_mirror_fail_and_others_go_on() {
    use crate::reactor::copy::{mirror::TARGET_SILENT, TARGET_ANSWER_NS};
    let (mut rig, m2, _) = undecided_with_a_held_write();
    let vol = rig.vol;
    let first = COPIED_SHARD * SHARD;
    let rec = rig.rec[1].0.clone();
    poll_rounds(&mut rig, 20);
    rig.submit(1, vol, IoType::Write, first + HELD_AT + 1, 4, 6);
    poll_rounds(&mut rig, 20);
    assert_eq!(
        rec.count(),
        0,
        "the overlapping write waits behind the held one"
    );
    assert!(
        poll_for(&mut rig, TARGET_ANSWER_NS * 10, || rec.count() >= 2),
        "the held write and the one behind it still wait past the limit: {:?}",
        rec.statuses()
    );
    assert_eq!(rec.statuses(), vec![TARGET_SILENT; 2]);
    rig.submit(1, vol, IoType::Write, first + HELD_AT - 1, 2, 7);
    poll_rounds(&mut rig, 20);
    assert_eq!(
        rec.count(),
        3,
        "a new overlapping write is not failed at once"
    );
    assert_eq!(rec.statuses()[2], TARGET_SILENT);
    rig.submit(1, vol, IoType::Write, first + 40, 3, 8);
    rig.settle(4);
    assert_eq!(rec.statuses()[3], IoStatus::Success);
    rig.release();
    rig.check(first + 40, 3, 8);
    assert!(on_target(&mut rig, m2, 40, 3, 8), "not on the target");
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// When the held target write finally lands, its slot goes: a later overlapping write is
/// mirrored as usual again (acknowledged, on both places); until then such a write fails
/// at once. Before the limit existed, the held write itself was acknowledged then.
#[test]
fn a_stalled_undecided_mirror_s_slot_goes_when_its_target_half_lands() {
    use crate::reactor::copy::{mirror::TARGET_SILENT, TARGET_ANSWER_NS};
    let (mut rig, m2, _) = undecided_with_a_held_write();
    let vol = rig.vol;
    let first = COPIED_SHARD * SHARD;
    let rec = rig.rec[1].0.clone();
    assert!(
        poll_for(&mut rig, TARGET_ANSWER_NS * 10, || rec.count() > 0),
        "still waiting for its target well past the limit"
    );
    rig.submit(1, vol, IoType::Write, first + HELD_AT, 1, 6);
    poll_rounds(&mut rig, 20);
    assert_eq!(
        rec.statuses(),
        vec![TARGET_SILENT; 2],
        "while the slot lives"
    );
    release_target(&rig);
    let ctx_busy = |rig: &mut Rig| rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32);
    let mut landed = false;
    for _ in 0..1000 {
        poll_rounds(&mut rig, 1);
        if !ctx_busy(&mut rig) {
            landed = true;
            break;
        }
    }
    assert!(landed, "the held target write did not land");
    assert!(
        on_target(&mut rig, m2, HELD_AT, 2, 5),
        "the late write landed"
    );
    rig.submit(1, vol, IoType::Write, first + HELD_AT, 2, 9);
    rig.settle(3);
    assert_eq!(rec.statuses()[2], IoStatus::Success);
    rig.release();
    rig.check(first + HELD_AT, 2, 9);
    assert!(on_target(&mut rig, m2, HELD_AT, 2, 9), "not mirrored");
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// An undecided copy whose source and target both hold a mirrored write (sent in
/// parallel): past the limit the client is still not answered, for its source half (with
/// its buffer) is out; once that is back, it is answered with `TARGET_SILENT`, the target
/// half still being out.
#[test]
fn a_stalled_undecided_mirror_is_answered_only_once_its_source_half_is_back() {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    use crate::reactor::copy::{mirror::TARGET_SILENT, TARGET_ANSWER_NS};
    let (mut rig, _, source) = source_rig();
    let ee = create_bdev(&rig.reg, "bdev_error_create", json!({"base_name": "M2"}))
        .unwrap()
        .0;
    let vol = rig.vol;
    copy_to_copied(&mut rig, ee);
    assert!(rig.rs[1]
        .ctx()
        .keep_copy_undecided(vol, COPIED_SHARD as u32));
    source.inject(InjectTarget::Write, ErrorKind::Pending, 1);
    hold_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, COPIED_SHARD * SHARD + 3, 2, 4);
    let rec = rig.rec[1].0.clone();
    assert!(
        !poll_for(&mut rig, TARGET_ANSWER_NS * 2, || rec.count() > 0),
        "answered before its source half is back: {:?}",
        rec.statuses()
    );
    source.inject(InjectTarget::Clear, ErrorKind::Pending, 0);
    rig.settle(1);
    assert_eq!(rec.statuses(), vec![TARGET_SILENT]);
    assert!(rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(!rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    assert_eq!(rec.count(), 1, "no second answer");
    rig.release();
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}

/// A target that answers none of an undecided copy's writes: each fails after the limit and
/// keeps its slot, so once `MAX_STALLED_MIRRORS` are held, every new write of the copy,
/// overlapping them or not, fails at once instead of gathering without bound. When they
/// land, writes are mirrored again.
#[test]
fn an_undecided_copy_holding_too_many_stalled_writes_fails_new_ones_at_once() {
    use crate::reactor::copy::mirror::{MAX_STALLED_MIRRORS, TARGET_SILENT};
    use crate::reactor::copy::TARGET_ANSWER_NS;
    let (mut rig, m2, ee) = copy_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, ee);
    assert!(rig.rs[1]
        .ctx()
        .keep_copy_undecided(vol, COPIED_SHARD as u32));
    let first = COPIED_SHARD * SHARD;
    let n = MAX_STALLED_MIRRORS as u64;
    assert!(n * 4 + 8 <= SHARD);
    hold_target_writes(&rig, n as u32);
    for i in 0..n {
        rig.submit(1, vol, IoType::Write, first + i * 4, 2, 20 + i);
    }
    let rec = rig.rec[1].0.clone();
    assert!(
        poll_for(&mut rig, TARGET_ANSWER_NS * 10, || rec.count()
            >= n as usize),
        "still waiting for the target past the limit: {:?}",
        rec.statuses()
    );
    assert_eq!(rec.statuses(), vec![TARGET_SILENT; n as usize]);
    // Far from every held write.
    let elsewhere = first + n * 4 + 4;
    rig.submit(1, vol, IoType::Write, elsewhere, 2, 90);
    poll_rounds(&mut rig, 20);
    assert_eq!(
        rec.count(),
        n as usize + 1,
        "a new write waits though the copy holds the most stalled writes it may"
    );
    assert_eq!(rec.statuses()[n as usize], TARGET_SILENT);
    release_target(&rig);
    let mut landed = false;
    for _ in 0..1000 {
        poll_rounds(&mut rig, 1);
        if !rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32) {
            landed = true;
            break;
        }
    }
    assert!(landed, "the held target writes did not land");
    rig.submit(1, vol, IoType::Write, elsewhere, 2, 91);
    rig.settle(n as usize + 2);
    assert_eq!(rec.statuses()[n as usize + 1], IoStatus::Success);
    rig.release();
    rig.check(elsewhere, 2, 91);
    assert!(on_target(&mut rig, m2, n * 4 + 4, 2, 91), "not mirrored");
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
}
