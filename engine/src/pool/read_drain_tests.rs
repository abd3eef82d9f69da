//! Pool tests of issue 26's finding 3: a moved shard's old source extent, and a member
//! leaving its pool, wait for the reads routed to them before the move (held on an error
//! bdev across the flip). The boot and I/O helpers are `pool::tests`'.

use super::*;

/// Arms `b`'s next data-migration commit (once the copy is whole, before the flip) to send
/// a read of `blocks` blocks at `offset` of "vol" and wait until error bdev `held_on` holds
/// it. Returns the read's outcome, once it is let go.
fn hold_a_read_across_the_next_flip(
    b: &Boot,
    held_on: &str,
    offset: u64,
    blocks: u32,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let injection = Arc::clone(
        b.registry
            .lookup(held_on)
            .unwrap()
            .1
            .downcast_ref::<crate::bdev::error::ErrorBdev>()
            .unwrap()
            .injection(),
    );
    let (engine, vol) = (Arc::clone(&b.engine), id(b, "vol"));
    let (tx, rx) = std::sync::mpsc::channel();
    let armed = Mutex::new(Some(tx));
    b.pools.set_before_flip(move || {
        let Some(tx) = armed.lock().unwrap().take() else {
            return; // Only the first commit.
        };
        injection.inject(InjectTarget::Read, ErrorKind::Pending, 1);
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let buf = engine.read_blocks(vol, offset, blocks, Duration::from_secs(60));
            let _ = tx.send(buf.unwrap().as_slice().to_vec());
        });
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while injection.remaining(crate::bdev::IoType::Read) > 0 {
            assert!(
                std::time::Instant::now() < until,
                "the read never reached the source"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    rx
}

/// Waits (up to 20 s) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < until, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `data`, read at `offset`, holds the pattern `write(.., seed)` left there.
fn holds_pattern(data: &[u8], offset: u64, seed: u8) -> bool {
    data.chunks(BS as usize).enumerate().all(|(i, block)| {
        block
            .iter()
            .all(|&x| x == seed.wrapping_add((offset + i as u64) as u8))
    })
}

/// Issue 26's finding 3: a moved shard's old extent stays out of use until the reads routed
/// to it before the flip are back. It used to go back to the free list at the flip: a copy
/// of another shard then took it, and a read held across the flip returned that shard's
/// data (this test's read, before the fix).
#[test]
fn a_moved_shard_s_old_extent_is_not_reused_while_a_read_routed_to_it_is_in_flight() {
    let (fa, fb) = files("old-source-reads");
    let b = boot_with_ee_b(&fa, &fb);
    create(&b, "p", &["A", "EE_B"], 1024).unwrap();
    volume(&b, "p", "vol", 2).unwrap();
    let moving = first_shard_on(&b, "vol", "EE_B");
    let other = first_shard_on(&b, "vol", "A");
    let (base, other_base) = (moving as u64 * 256, other as u64 * 256);
    write(&b, "vol", base, 256, 3).unwrap();
    write(&b, "vol", other_base, 256, 5).unwrap();
    let ee_b = |b: &Boot| pools_json(b)[0]["members"][1].clone();
    let free_before = ee_b(&b)["free_shards"].as_u64().unwrap();
    let read = hold_a_read_across_the_next_flip(&b, "EE_B", base, 256);
    let migrate = |shard: u32, target: &str| {
        b.pools.migrate_shard(&ShardMigrateParams {
            volume: "vol".into(),
            shard,
            target_core: None,
            target_bdev: Some(target.into()),
        })
    };
    migrate(moving, "A").unwrap();
    wait_until("the moved shard is routed to A", || {
        b.pools.volumes_json(Some("vol")).unwrap()[0]["shards"][moving as usize]["bdev"] == "A"
    });
    // The flip is done and the held read is still out. A copy of the other shard to EE_B
    // meanwhile must take another extent there.
    let while_held = ee_b(&b);
    migrate(other, "EE_B").unwrap();
    wait_until("the other shard's copy ends", || {
        b.pools.migration_outcome("vol", other as usize).is_some()
    });
    assert_eq!(
        b.pools.migration_outcome("vol", other as usize),
        Some(Ok(()))
    );
    let all = b.pools.migrations_json(Some("vol"));
    let moving_state = all
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["shard"] == moving)
        .cloned();
    let moving_state = moving_state.unwrap();
    release_held(&b, "EE_B");
    let data = read.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        holds_pattern(&data, base, 3),
        "a read routed before the move returned another shard's data"
    );
    // Meanwhile the move waited for the read, its old extent out of use.
    assert_eq!(moving_state["state"], "draining reads", "{moving_state}");
    assert_eq!(while_held["reserved_shards"], 1, "{while_held}");
    assert_eq!(while_held["free_shards"], free_before, "{while_held}");
    wait_until("the move completes once its reads are back", || {
        b.pools.migration_outcome("vol", moving as usize).is_some()
    });
    assert_eq!(
        b.pools.migration_outcome("vol", moving as usize),
        Some(Ok(()))
    );
    // EE_B now holds the other shard, and its old extent is free again.
    assert_eq!(ee_b(&b)["reserved_shards"], 0, "{}", ee_b(&b));
    assert_eq!(ee_b(&b)["free_shards"], free_before);
    assert!(read_matches(&b, "vol", base, 256, 3));
    assert!(read_matches(&b, "vol", other_base, 256, 5));
}

/// Finding 3 for `pool_remove_bdev`: the member leaves the pool (and its claim, to a new
/// user) only once the reads routed to it before its last shard moved are back. Before
/// the fix it left at once (this test never saw the drain's move wait).
#[test]
fn a_member_leaves_the_pool_only_once_the_reads_routed_to_it_are_back() {
    let (fa, fb) = files("remove-after-reads");
    let b = boot_with_ee_b(&fa, &fb);
    create(&b, "p", &["A", "EE_B"], 1024).unwrap();
    volume(&b, "p", "vol", 2).unwrap();
    let moving = first_shard_on(&b, "vol", "EE_B");
    let base = moving as u64 * 256;
    write(&b, "vol", base, 256, 7).unwrap();
    let read = hold_a_read_across_the_next_flip(&b, "EE_B", base, 256);
    b.pools
        .remove_member(&remove::PoolRemoveBdevParams {
            pool: "p".into(),
            bdev: "EE_B".into(),
        })
        .unwrap();
    wait_until("the drain's move waits for the held read", || {
        let all = b.pools.migrations_json(Some("vol"));
        all[0]["shard"] == moving && all[0]["state"] == "draining reads"
    });
    let members = |b: &Boot| pools_json(b)[0]["members"].as_array().unwrap().len();
    assert_eq!(
        members(&b),
        2,
        "EE_B left the pool with a read to it in flight"
    );
    assert!(
        b.registry.claim("EE_B", "another user").is_err(),
        "EE_B was released with a read to it in flight"
    );
    release_held(&b, "EE_B");
    let data = read.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(holds_pattern(&data, base, 7));
    wait_until("EE_B leaves the pool", || members(&b) == 1);
    b.registry.claim("EE_B", "another user").unwrap();
    assert!(read_matches(&b, "vol", base, 256, 7));
}
