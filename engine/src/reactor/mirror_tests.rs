//! Mirrored writes sent in parallel (issue 26): a write's target half goes out without
//! waiting for its source half, a source failure under a landed target half restarts the
//! copy, and a copy out of mirror buffers falls back to one half after the other. The source
//! here is an error bdev (EE_M1) that holds or fails the writes it is told to.

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
