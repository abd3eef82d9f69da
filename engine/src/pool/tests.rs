//! Pool tests on a running engine (two unpinned reactors) with uring bdevs on scratch files,
//! so that a "restart" is a new engine and registry reading the same files. The tests under
//! load and under faults (hand-overs, copies, failing or late metadata writes) are in
//! `fault_tests.rs`, and those of reads in flight across a move in `read_drain_tests.rs`;
//! both share the helpers here.

use super::*;
use crate::bdev::error::{ErrorKind, InjectTarget};
use crate::bdev::IoStatus;
use crate::config::create_bdev;
use crate::pool::metadata::SLOT_BYTES;
use crate::reactor::{BlockingIoError, EngineConfig};
use crate::testkit::temp_file;
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BS: u32 = 4096;
const FILE_BYTES: u64 = 2 * SLOT_BYTES + 8 * (1 << 20);

/// One "boot": an engine and a registry with a uring bdev per file, plus a pool service.
struct Boot {
    engine: Arc<Engine>,
    registry: Arc<BdevRegistry>,
    pools: Arc<PoolService>,
}

fn boot(files: &[(&str, &Path)]) -> Boot {
    let registry = Arc::new(BdevRegistry::new());
    for (name, path) in files {
        let p = json!({"name": name, "filename": path, "block_size": BS});
        create_bdev(&registry, "bdev_uring_create", p).unwrap();
    }
    let mut config = EngineConfig::new(vec![0, 1]);
    config.pin = false;
    let engine = Arc::new(Engine::start(config, Arc::clone(&registry)).unwrap());
    let pools = Arc::new(PoolService::new(Arc::clone(&engine), Arc::clone(&registry)));
    Boot {
        engine,
        registry,
        pools,
    }
}

/// A device that only reads and writes, for the pool's refusal of it (never opened).
struct ReadWriteOnly(BdevInfo);

impl crate::bdev::Bdev for ReadWriteOnly {
    fn info(&self) -> &BdevInfo {
        &self.0
    }

    fn open_channel(&self) -> Result<Box<dyn crate::bdev::BdevChannel>, BdevError> {
        Err(BdevError::invalid(
            "name",
            "a test device that is never opened",
        ))
    }

    fn config_entry(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn files(test: &str) -> (PathBuf, PathBuf) {
    (
        temp_file(&format!("{test}-a"), FILE_BYTES),
        temp_file(&format!("{test}-b"), FILE_BYTES),
    )
}

fn create(b: &Boot, name: &str, members: &[&str], shard_kib: u64) -> Result<(), PoolError> {
    b.pools.create(&PoolCreateParams {
        name: name.into(),
        base_bdevs: members.iter().map(|s| s.to_string()).collect(),
        shard_size_mib: None,
        shard_size_kib: Some(shard_kib),
        force: false,
    })
}

fn volume(b: &Boot, pool: &str, name: &str, size_mib: u64) -> Result<(), PoolError> {
    b.pools.create_volume(&VolumeCreateParams {
        pool: pool.into(),
        name: name.into(),
        size_mib,
    })
}

fn id(b: &Boot, name: &str) -> BdevId {
    b.registry.lookup(name).unwrap().0
}

/// Writes `blocks` blocks of a pattern (block number and `seed`) at `offset` of a bdev.
fn write(b: &Boot, bdev: &str, offset: u64, blocks: u64, seed: u8) -> Result<(), BlockingIoError> {
    let mut data = vec![0u8; (blocks * BS as u64) as usize];
    for (i, block) in data.chunks_mut(BS as usize).enumerate() {
        block.fill(seed.wrapping_add((offset + i as u64) as u8));
    }
    b.engine
        .write_blocks(id(b, bdev), offset, &data, Duration::from_secs(5))
}

fn read_matches(b: &Boot, bdev: &str, offset: u64, blocks: u64, seed: u8) -> bool {
    let buf = b
        .engine
        .read_blocks(id(b, bdev), offset, blocks as u32, Duration::from_secs(5))
        .unwrap();
    buf.as_slice()
        .chunks(BS as usize)
        .enumerate()
        .all(|(i, block)| {
            block
                .iter()
                .all(|&x| x == seed.wrapping_add((offset + i as u64) as u8))
        })
}

/// `pool_import` of the bdevs named, not forced.
fn import(b: &Boot, names: &[&str]) -> Result<String, PoolError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    b.pools.import(&names, false)
}

/// Flushes bdev `name` (a volume, say), as a client does before it counts on its writes.
fn flush(b: &Boot, name: &str) {
    b.engine
        .flush_wait(id(b, name), Duration::from_secs(5))
        .unwrap();
}

/// The index of the first shard of `volume` placed on `bdev`.
fn first_shard_on(b: &Boot, volume: &str, bdev: &str) -> u32 {
    let shards = b.pools.volumes_json(Some(volume)).unwrap()[0]["shards"].clone();
    shards
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["bdev"] == bdev)
        .unwrap() as u32
}

/// The pool description in the slot that holds `generation` on member file `path`: what a
/// crash test starts from to build the state a crash leaves.
fn record_at(path: &Path, generation: u64) -> PoolRecord {
    let mut bytes = vec![0u8; SLOT_BYTES as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, metadata::slot_of(generation) * SLOT_BYTES)
        .unwrap();
    metadata::decode(&bytes).unwrap().record
}

/// Writes `record` as `generation` of member `index` into member file `path`, as a write that
/// reached that member alone would have.
fn write_generation_to(path: &Path, record: &PoolRecord, index: u32, generation: u64) {
    let bytes = metadata::encode(record, index, generation, BS).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&bytes, metadata::slot_of(generation) * SLOT_BYTES)
        .unwrap();
}

fn pools_json(b: &Boot) -> Value {
    b.pools.pools_json(None).unwrap()
}

/// Boots on files A and B with an error bdev `EE_B` stacked on B.
fn boot_with_ee_b(fa: &Path, fb: &Path) -> Boot {
    let b = boot(&[("A", fa), ("B", fb)]);
    create_bdev(&b.registry, "bdev_error_create", json!({"base_name": "B"})).unwrap();
    b
}

/// [`boot_with_ee_b`]: the first time it makes pool "p" on A and EE_B (1 MiB shards), later
/// it imports it.
fn boot_on_a_and_ee_b(fa: &Path, fb: &Path, first: bool) -> Boot {
    let b = boot_with_ee_b(fa, fb);
    if first {
        create(&b, "p", &["A", "EE_B"], 1024).unwrap();
    } else {
        import(&b, &["A", "EE_B"]).unwrap();
    }
    b
}

/// Arms `kind` for the next `n` I/Os of `target` that reach error bdev `name`.
fn inject(b: &Boot, name: &str, target: InjectTarget, kind: ErrorKind, n: u32) {
    let bdev = b.registry.lookup(name).unwrap().1;
    let injection = bdev
        .downcast_ref::<crate::bdev::error::ErrorBdev>()
        .unwrap()
        .injection();
    injection.inject(target, kind, n);
}

/// Fails the next `n` writes that reach error bdev `name`.
fn fail_writes(b: &Boot, name: &str, n: u32) {
    inject(b, name, InjectTarget::Write, ErrorKind::Failure, n);
}

/// Injects `kind` into the next write to error bdev `name` once `pool_delete` has marked the
/// pool, so that it hits a wipe.
fn at_first_wipe(b: &Boot, name: &str, kind: ErrorKind) {
    let bdev = b.registry.lookup(name).unwrap().1;
    b.pools.set_before_wipe(move || {
        let injection = bdev
            .downcast_ref::<crate::bdev::error::ErrorBdev>()
            .unwrap()
            .injection();
        injection.inject(InjectTarget::Write, kind, 1);
    });
}

/// Holds the next `n` writes that reach error bdev `name` until [`release_held`].
fn hold_writes(b: &Boot, name: &str, n: u32) {
    inject(b, name, InjectTarget::Write, ErrorKind::Pending, n);
}

/// Lets the I/Os held on error bdev `name` go on to its base.
fn release_held(b: &Boot, name: &str) {
    inject(b, name, InjectTarget::Clear, ErrorKind::Failure, 0);
}

#[test]
fn a_pool_and_its_volume_come_back_after_a_restart() {
    let (fa, fb) = files("restart");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "vol", 6).unwrap();
    // 6 MiB in 1 MiB shards: three on each member, owners over both reactors.
    let v = first.pools.volumes_json(Some("vol")).unwrap();
    let shards = v[0]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6);
    for m in ["A", "B"] {
        assert_eq!(shards.iter().filter(|s| s["bdev"] == m).count(), 3);
    }
    for o in 0..2 {
        assert_eq!(shards.iter().filter(|s| s["owner_core"] == o).count(), 3);
    }
    let listed = first.registry.lookup("vol").unwrap().1;
    assert_eq!(listed.info().product_name, "tidepool volume");
    write(&first, "vol", 0, 6 * 256, 7).unwrap();
    flush(&first, "vol");
    let saved = first.pools.config_entries();
    assert_eq!(
        saved,
        [
            json!({"method": "migration_set_options",
                   "params": serde_json::to_value(first.pools.migration_options()).unwrap()}),
            json!({"method": "pool_import", "params": {"base_bdevs": ["A", "B"]}})
        ]
    );
    drop(first);

    let second = boot(&[("A", &fa), ("B", &fb)]);
    assert_eq!(import(&second, &["A", "B"]).unwrap(), "p");
    assert!(read_matches(&second, "vol", 0, 6 * 256, 7));
    let pools = pools_json(&second);
    assert_eq!(pools[0]["state"], "online");
    // Create 1 and 2, volume 3, import's heal 6 (it skips two, see `import`).
    assert_eq!(pools[0]["generation"], 6, "create, volume, import's heal");
    assert_eq!(
        second.pools.volumes_json(Some("vol")).unwrap()[0]["shards"],
        v[0]["shards"]
    );
    // Members are claimed by the pool, the volume is a bdev like any other.
    assert!(matches!(
        second.registry.unregister("A"),
        Err(BdevError::InUse { .. })
    ));
}

#[test]
fn a_corrupt_slot_falls_back_to_the_other_and_is_healed() {
    let (fa, fb) = files("corrupt");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "vol", 2).unwrap();
    drop(first);
    // Generation 3 (with the volume) is in slot 1 of both members. Corrupt it on A only:
    // B still holds it, so the volume survives and A is rewritten.
    let flip = |path: &Path, at: u64| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    };
    flip(&fa, SLOT_BYTES + 100);
    let second = boot(&[("A", &fa), ("B", &fb)]);
    import(&second, &["A", "B"]).unwrap();
    assert!(second.pools.volume("vol").is_some());
    drop(second);
    // Import wrote generation 6 to slot 0 everywhere. Tear it on both members: generation
    // 3 in slot 1 of B is what remains whole.
    flip(&fa, 200);
    flip(&fb, 150);
    let third = boot(&[("A", &fa), ("B", &fb)]);
    import(&third, &["A", "B"]).unwrap();
    assert!(third.pools.volume("vol").is_some());
    assert_eq!(pools_json(&third)[0]["generation"], 6);
    drop(third);
    // Both slots of both members ruined: nothing to import, and nothing changes.
    for f in [&fa, &fb] {
        flip(f, 70);
        flip(f, SLOT_BYTES + 70);
    }
    let fourth = boot(&[("A", &fa), ("B", &fb)]);
    let err = import(&fourth, &["A", "B"]).unwrap_err();
    assert!(matches!(err, PoolError::NoPool(_)), "{err}");
    assert!(fourth.registry.lookup("vol").is_none());
    assert!(
        fourth.registry.claim("A", "test").is_ok(),
        "a failed import claims nothing"
    );
}

#[test]
fn a_missing_member_brings_the_pool_up_degraded_with_clear_errors() {
    let (fa, fb) = files("degraded");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "vol", 4).unwrap();
    write(&first, "vol", 0, 4 * 256, 3).unwrap();
    drop(first);
    // B is gone: the config names it, but it does not exist.
    let second = boot(&[("A", &fa)]);
    import(&second, &["A", "B"]).unwrap();
    let pools = pools_json(&second);
    assert_eq!(pools[0]["state"], "degraded");
    assert_eq!(pools[0]["members"][1]["state"], "missing");
    let table = second.pools.volumes_json(Some("vol")).unwrap()[0]["shards"].clone();
    for (i, shard) in table.as_array().unwrap().iter().enumerate() {
        let on_a = shard["bdev"] == "A";
        assert_eq!(shard["state"], if on_a { "online" } else { "unavailable" });
        let offset = i as u64 * 256;
        if on_a {
            assert!(read_matches(&second, "vol", offset, 256, 3), "shard {i}");
        } else {
            let err = second
                .engine
                .read_blocks(id(&second, "vol"), offset, 1, Duration::from_secs(5))
                .unwrap_err();
            let enodev = IoStatus::Failed {
                errno: libc::ENODEV,
            };
            assert_eq!(err, BlockingIoError::Status(enodev), "shard {i}");
        }
    }
    let err = volume(&second, "p", "more", 1).unwrap_err();
    assert!(matches!(err, PoolError::Degraded(_)), "{err}");
}

/// An import that leaves out a member that is present is refused: the member would stay
/// unclaimed (free to be exported or pooled and written over) and the pool degraded.
#[test]
fn an_import_that_leaves_out_a_present_member_is_refused() {
    let (fa, fb) = files("left-out");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "vol", 4).unwrap();
    drop(first);
    let second = boot(&[("A", &fa), ("B", &fb)]);
    let e = import(&second, &["A"]).unwrap_err().to_string();
    assert!(e.contains("'B' is member 1 of pool 'p'"), "{e}");
    assert_eq!(pools_json(&second), json!([]));
    assert!(second.registry.lookup("vol").is_none());
    // Nothing was claimed: the full import goes through, with both members online.
    import(&second, &["A", "B"]).unwrap();
    assert_eq!(pools_json(&second)[0]["state"], "online");
}

/// Shards so small that the pool's description, with one volume filling it, would not fit a
/// metadata slot: refused at pool_create (its capacity could never be used), nothing claimed.
#[test]
fn a_pool_whose_full_description_would_not_fit_a_slot_is_refused() {
    let size = DATA_START_BYTES + (64 << 20);
    let (fa, fb) = (temp_file("full-a", size), temp_file("full-b", size));
    let b = boot(&[("A", &fa), ("B", &fb)]);
    // 2 x 16384 shards of 4 KiB: some 40 bytes each, more than a 1 MiB slot.
    let e = create(&b, "p", &["A", "B"], 4).unwrap_err().to_string();
    assert!(
        e.contains("shard_size_kib") && e.contains("32768 shards of 4 KiB"),
        "{e}"
    );
    assert_eq!(pools_json(&b), json!([]));
    // A size past the range is named as given, not as the saturated byte count.
    let huge = b.pools.create(&PoolCreateParams {
        name: "p".into(),
        base_bdevs: vec!["A".into(), "B".into()],
        shard_size_mib: Some(1 << 63),
        shard_size_kib: None,
        force: false,
    });
    let e = huge.unwrap_err().to_string();
    assert!(
        e.contains("shard_size_mib") && e.contains("9223372036854775808 MiB"),
        "{e}"
    );
    create(&b, "p", &["A", "B"], 64).unwrap();
    volume(&b, "p", "all", 128).unwrap();
}

/// A description that reached one member just before a crash (generation g + 1 on A only)
/// must not tie with the one a degraded import writes while A is away: that import skips
/// past it, so when A is back the newer description wins whatever the order of the list,
/// with the writes made meanwhile.
#[test]
fn a_degraded_import_never_writes_a_generation_a_missing_member_may_hold() {
    let (fa, fb) = files("gen-tie");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "vol", 2).unwrap();
    let on_b = first_shard_on(&first, "vol", "B");
    let generation = pools_json(&first)[0]["generation"].as_u64().unwrap();
    drop(first);
    // Generation + 1 lands on A only: it moves B's shard to a free extent of A.
    let mut moved = record_at(&fa, generation);
    assert_eq!(moved.members[1].bdev_name, "B");
    let used: Vec<u64> = moved.volumes[0]
        .shards
        .iter()
        .filter(|s| s.member == 0)
        .map(|s| s.extent)
        .collect();
    let free = (0..moved.members[0].extents)
        .find(|e| !used.contains(e))
        .unwrap();
    moved.volumes[0].shards[on_b as usize].member = 0;
    moved.volumes[0].shards[on_b as usize].extent = free;
    write_generation_to(&fa, &moved, 0, generation + 1);
    // A is away: B comes up degraded, and the shard on B takes a write.
    let second = boot(&[("B", &fb)]);
    import(&second, &["A", "B"]).unwrap();
    write(&second, "vol", on_b as u64 * 256, 256, 9).unwrap();
    flush(&second, "vol");
    drop(second);
    for order in [["B", "A"], ["A", "B"]] {
        let b = boot(&[("A", &fa), ("B", &fb)]);
        b.pools.import(&order.map(String::from), false).unwrap();
        assert!(
            read_matches(&b, "vol", on_b as u64 * 256, 256, 9),
            "{order:?}"
        );
        drop(b);
    }
}

/// A crash part-way through pool_delete: the marking generation reached a member (here A
/// only, the first one written), and nothing was wiped yet. An import finishes the deletion
/// rather than bring back the generation before it (with a deleted volume, in the probe that
/// found this).
#[test]
fn an_import_after_a_crash_in_pool_delete_finishes_the_deletion() {
    let (fa, fb) = files("crashed-delete");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    volume(&first, "p", "gone", 2).unwrap();
    first.pools.delete_volume("gone").unwrap();
    let generation = pools_json(&first)[0]["generation"].as_u64().unwrap();
    drop(first);
    let mut marked = record_at(&fa, generation);
    marked.deleting = true;
    write_generation_to(&fa, &marked, 0, generation + 1);

    let second = boot(&[("A", &fa), ("B", &fb)]);
    let e = import(&second, &["A", "B"]).unwrap_err();
    assert!(e.to_string().contains("was being deleted"), "{e}");
    assert_eq!(pools_json(&second), json!([]));
    // Both members are clean: a pool can be made on them without force.
    create(&second, "q", &["A", "B"], 1024).unwrap();
    drop(second);
    let third = boot(&[("A", &fa), ("B", &fb)]);
    assert_eq!(import(&third, &["A", "B"]).unwrap(), "q");
}

/// A crash during pool_remove_bdev's last write: the renumbered description (A gone, B and C
/// now members 0 and 1) reached B only. C still says it is member 2; it is taken back as
/// member 1 by its name, not dropped for its old number (the pool came up degraded for good).
#[test]
fn a_member_that_missed_a_renumbering_is_taken_back_by_its_name() {
    let (fa, fb) = files("renumbered");
    let fc = temp_file("renumbered-c", FILE_BYTES);
    let first = boot(&[("A", &fa), ("B", &fb), ("C", &fc)]);
    create(&first, "p", &["A", "B", "C"], 1024).unwrap();
    let generation = pools_json(&first)[0]["generation"].as_u64().unwrap();
    drop(first);
    let mut renumbered = record_at(&fb, generation);
    renumbered.members.remove(0);
    write_generation_to(&fb, &renumbered, 0, generation + 1);

    let second = boot(&[("B", &fb), ("C", &fc)]);
    import(&second, &["B", "C"]).unwrap();
    let pools = pools_json(&second);
    assert_eq!(pools[0]["state"], "online", "{pools}");
    assert_eq!(pools[0]["members"].as_array().unwrap().len(), 2, "{pools}");
    assert_eq!(pools[0]["members"][1]["name"], "C", "{pools}");
    volume(&second, "p", "v", 2).unwrap();
}

/// A pool brought up twice in two parts (A and B without C; then C alone), each changing
/// it: the newest description came from one part and silently dropped what the other saw (a
/// shard moved and written there read back its old data). Import refuses, saying which
/// members went on without which; with force it keeps the newest description.
#[test]
fn a_pool_changed_in_two_parts_is_not_imported_without_force() {
    let (fa, fb) = files("divided");
    let fc = temp_file("divided-c", FILE_BYTES);
    let names: Vec<String> = ["A", "B", "C"].iter().map(|s| s.to_string()).collect();
    let first = boot(&[("A", &fa), ("B", &fb), ("C", &fc)]);
    create(&first, "p", &["A", "B", "C"], 1024).unwrap();
    volume(&first, "p", "vol", 3).unwrap();
    let on_a = first_shard_on(&first, "vol", "A");
    write(&first, "vol", on_a as u64 * 256, 256, 1).unwrap();
    drop(first);

    // One part: A and B. A's shard moves to B and is written there.
    let second = boot(&[("A", &fa), ("B", &fb)]);
    second.pools.import(&names[..2], false).unwrap();
    second
        .pools
        .migrate_shard(&ShardMigrateParams {
            volume: "vol".into(),
            shard: on_a,
            target_core: None,
            target_bdev: Some("B".into()),
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.pools.running_migrations() > 0 {
        assert!(std::time::Instant::now() < deadline, "the copy did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let shards = second.pools.volumes_json(Some("vol")).unwrap()[0]["shards"].clone();
    assert_eq!(shards[on_a as usize]["bdev"], "B", "{shards}");
    write(&second, "vol", on_a as u64 * 256, 256, 7).unwrap();
    flush(&second, "vol");
    drop(second);

    // The other part: C alone.
    let third = boot(&[("C", &fc)]);
    third.pools.import(&names[2..], false).unwrap();
    drop(third);

    let fourth = boot(&[("A", &fa), ("B", &fb), ("C", &fc)]);
    let err = fourth.pools.import(&names, false).unwrap_err().to_string();
    assert!(
        err.contains("pool 'p' was divided: 'C' holds generation"),
        "{err}"
    );
    assert!(err.contains("written while 'A', 'B' were missing"), "{err}");
    assert_eq!(pools_json(&fourth), json!([]));
    fourth.registry.claim("A", "test").unwrap();
    fourth.registry.release("A", "test");
    fourth.pools.import(&names, true).unwrap();
    assert_eq!(pools_json(&fourth)[0]["state"], "online");
    assert!(read_matches(&fourth, "vol", on_a as u64 * 256, 256, 7));
}

/// A pool's member is replaced by a blank disk under the same name, and that disk goes to a
/// new pool: save_config no longer lists the name for the old pool (the import at the next
/// start failed on it as another pool's member, and with it the whole config).
#[test]
fn save_config_leaves_out_a_missing_member_s_name_another_pool_took() {
    let (fa, fb) = files("name-taken");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    drop(first);
    let blank = temp_file("name-taken-new", FILE_BYTES);
    let second = boot(&[("A", &fa), ("B", &blank)]);
    import(&second, &["A", "B"]).unwrap();
    assert_eq!(pools_json(&second)[0]["state"], "degraded");
    create(&second, "q", &["B"], 1024).unwrap();
    let saved = second.pools.config_entries();
    let imports: Vec<&Value> = saved
        .iter()
        .filter(|e| e["method"] == "pool_import")
        .collect();
    assert_eq!(imports.len(), 2, "{saved:?}");
    assert!(
        imports
            .iter()
            .any(|e| e["params"]["base_bdevs"] == json!(["A"])),
        "{saved:?}"
    );
    assert!(
        imports
            .iter()
            .any(|e| e["params"]["base_bdevs"] == json!(["B"])),
        "{saved:?}"
    );
    drop(second);
    let third = boot(&[("A", &fa), ("B", &blank)]);
    import(&third, &["B"]).unwrap();
    import(&third, &["A"]).unwrap();
    assert_eq!(pools_json(&third).as_array().unwrap().len(), 2);
}

/// A new volume reads zeroes where a deleted one was written (its extents are cleared
/// before the placement is persisted); a clear that gets no answer fails the create and keeps
/// its extent out of use, since it may still land on a later volume's data.
#[test]
fn a_new_volume_reads_zeroes_not_a_deleted_volume_s_data() {
    let (fa, fb) = files("cleared");
    let b = boot_with_ee_b(&fa, &fb);
    create(&b, "p", &["A", "EE_B"], 1024).unwrap();
    volume(&b, "p", "old", 2).unwrap();
    write(&b, "old", 0, 512, 7).unwrap();
    b.pools.delete_volume("old").unwrap();
    volume(&b, "p", "new", 2).unwrap();
    let zeroes = b
        .engine
        .read_blocks(id(&b, "new"), 0, 512, Duration::from_secs(5))
        .unwrap();
    assert!(zeroes.as_slice().iter().all(|&x| x == 0), "old data shows");
    b.pools.delete_volume("new").unwrap();

    b.pools.set_deadline(Duration::from_millis(300));
    inject(&b, "EE_B", InjectTarget::WriteZeroes, ErrorKind::Pending, 1);
    let err = volume(&b, "p", "held", 2).unwrap_err().to_string();
    assert!(err.contains("stays out of use until a restart"), "{err}");
    assert!(b.registry.lookup("held").is_none());
    assert_eq!(pools_json(&b)[0]["members"][1]["reserved_shards"], 1);
    release_held(&b, "EE_B");
}

/// A degraded pool is not deleted unless forced: its missing member keeps the description
/// and would bring the pool back when it returned (a deleted pool, and the volumes deleted
/// before it, came back that way).
#[test]
fn deleting_a_degraded_pool_needs_force() {
    let (fa, fb) = files("delete-degraded");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    drop(first);
    let second = boot(&[("A", &fa)]);
    import(&second, &["A", "B"]).unwrap();
    let err = second.pools.delete("p", false).unwrap_err().to_string();
    assert!(err.contains("is degraded (B missing)"), "{err}");
    assert!(err.contains("force: true"), "{err}");
    assert_eq!(pools_json(&second)[0]["state"], "degraded");
    second.pools.delete("p", true).unwrap();
    assert_eq!(pools_json(&second), json!([]));
    drop(second);
    let third = boot(&[("A", &fa)]);
    let err = import(&third, &["A"]).unwrap_err();
    assert!(matches!(err, PoolError::NoPool(_)), "{err}");
}

/// Device names shift when a disk goes missing: with B's file gone, A's file comes up under
/// the name "B". It is still member 0 (it used to take the index the newest description gave
/// the name "B", and be served as member 1, another member's data with no error), B's shards
/// fail, and with the files back under their own names the whole pool returns with its data.
#[test]
fn a_member_is_known_by_its_identity_not_by_a_name_another_device_took() {
    let (fa, fb) = files("shifted");
    let fc = temp_file("shifted-c", FILE_BYTES);
    let first = boot(&[("A", &fa), ("B", &fb), ("C", &fc)]);
    create(&first, "p", &["A", "B", "C"], 1024).unwrap();
    volume(&first, "p", "vol", 3).unwrap();
    let on = |b: &Boot, member: &str| first_shard_on(b, "vol", member) as u64 * 256;
    let (at_a, at_b, at_c) = (on(&first, "A"), on(&first, "B"), on(&first, "C"));
    for (at, seed) in [(at_a, 1), (at_b, 2), (at_c, 3)] {
        write(&first, "vol", at, 256, seed).unwrap();
    }
    flush(&first, "vol");
    let member_uuids = |b: &Boot| -> Vec<String> {
        let pools = pools_json(b);
        let members = pools[0]["members"].as_array().unwrap().clone();
        members
            .iter()
            .map(|m| m["uuid"].as_str().expect("a member uuid").to_string())
            .collect()
    };
    let uuids = member_uuids(&first);
    assert!(uuids[0] != uuids[1] && uuids[1] != uuids[2] && uuids[0] != uuids[2]);
    drop(first);

    // B's file is missing; A's comes up as "B".
    let second = boot(&[("B", &fa), ("C", &fc)]);
    import(&second, &["B", "C"]).unwrap();
    assert_eq!(pools_json(&second)[0]["state"], "degraded");
    // Two members may show one name now (the missing one keeps its last); their uuids tell
    // them apart, and they are the ones pool_create gave.
    assert_eq!(member_uuids(&second), uuids);
    assert!(read_matches(&second, "vol", at_a, 256, 1));
    assert!(second
        .engine
        .read_blocks(id(&second, "vol"), at_b, 1, Duration::from_secs(5))
        .is_err());
    let saved = second.pools.config_entries();
    assert_eq!(
        saved[1]["params"]["base_bdevs"],
        json!(["B", "C"]),
        "{saved:?}"
    );
    drop(second);

    // A's file is missing; B's and C's are back under their own names.
    let third = boot(&[("B", &fb), ("C", &fc)]);
    import(&third, &["B", "C"]).unwrap();
    assert_eq!(pools_json(&third)[0]["state"], "degraded");
    assert!(read_matches(&third, "vol", at_b, 256, 2));
    assert!(read_matches(&third, "vol", at_c, 256, 3));
    assert!(third
        .engine
        .read_blocks(id(&third, "vol"), at_a, 1, Duration::from_secs(5))
        .is_err());
    drop(third);

    let fourth = boot(&[("A", &fa), ("B", &fb), ("C", &fc)]);
    import(&fourth, &["A", "B", "C"]).unwrap();
    assert_eq!(pools_json(&fourth)[0]["state"], "online");
    for (at, seed) in [(at_a, 1), (at_b, 2), (at_c, 3)] {
        assert!(read_matches(&fourth, "vol", at, 256, seed), "{at}");
    }
}

/// A crash during pool_create, after generation 1 reached A and before B: not a pool (it
/// came up degraded, B present but unclaimed), refused by import with what to do.
#[test]
fn an_import_refuses_a_pool_whose_creation_did_not_finish() {
    let (fa, fb) = files("half-created");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "p", &["A", "B"], 1024).unwrap();
    drop(first);
    let record = record_at(&fa, 2);
    let zero = vec![0u8; 2 * SLOT_BYTES as usize];
    for path in [&fa, &fb] {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&zero, 0).unwrap();
    }
    write_generation_to(&fa, &record, 0, 1);

    let second = boot(&[("A", &fa), ("B", &fb)]);
    let e = import(&second, &["A", "B"]).unwrap_err();
    assert!(e.to_string().contains("did not finish"), "{e}");
    assert_eq!(pools_json(&second), json!([]));
    second
        .pools
        .create(&PoolCreateParams {
            name: "p".into(),
            base_bdevs: vec!["A".into(), "B".into()],
            shard_size_mib: None,
            shard_size_kib: Some(1024),
            force: true,
        })
        .unwrap();
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let (fa, fb) = files("bad");
    let fc = temp_file("bad-c", 1 << 20);
    let b = boot(&[("A", &fa), ("B", &fb), ("Tiny", &fc)]);
    let err = create(&b, "p", &["A", "B"], 6).unwrap_err();
    assert!(
        err.to_string().contains("multiple of the 4096-byte block"),
        "{err}"
    );
    let err = create(&b, "p", &["A", "Tiny"], 1024).unwrap_err();
    assert!(
        err.to_string().contains("cannot hold the metadata"),
        "{err}"
    );
    let err = create(&b, "p", &["A", "A"], 1024).unwrap_err();
    assert!(err.to_string().contains("named twice"), "{err}");
    // 8 GiB of null device in 4 KiB shards: two million extents on one member.
    let p = json!({"name": "Huge", "num_blocks": 1u64 << 21, "block_size": BS});
    create_bdev(&b.registry, "bdev_null_create", p).unwrap();
    let err = create(&b, "p", &["Huge"], 4).unwrap_err();
    assert!(err.to_string().contains("use larger shards"), "{err}");
    // A device that cannot flush would leave metadata volatile.
    b.registry
        .register(Arc::new(ReadWriteOnly(BdevInfo {
            name: "NoFlush".into(),
            product_name: "read-write only",
            block_size: BS,
            num_blocks: FILE_BYTES / BS as u64,
            uuid: crate::bdev::new_uuid(),
            supported: IoTypeSet::of(&[IoType::Read, IoType::Write]),
        })))
        .unwrap();
    let err = create(&b, "p", &["A", "NoFlush"], 1024).unwrap_err();
    assert!(
        err.to_string()
            .contains("'NoFlush' does not support flush I/O; a pool member must"),
        "{err}"
    );
    let err = create(&b, "p", &["A", "Nope"], 1024).unwrap_err();
    assert!(
        matches!(err, PoolError::Bdev(BdevError::NotFound(_))),
        "{err}"
    );
    assert!(
        b.registry.claim("A", "x").is_ok(),
        "failed creates claim nothing"
    );
    b.registry.release("A", "x");

    create(&b, "p", &["A", "B"], 1024).unwrap();
    let err = create(&b, "p", &["Tiny"], 64).unwrap_err();
    assert!(matches!(err, PoolError::Exists(_)), "{err}");
    let err = create(&b, "q", &["A"], 1024).unwrap_err();
    assert!(
        matches!(err, PoolError::Bdev(BdevError::InUse { .. })),
        "{err}"
    );

    let generation = pools_json(&b)[0]["generation"].clone();
    // 8 MiB per member in 1 MiB shards: 16 shards in all.
    let err = volume(&b, "p", "big", 17).unwrap_err();
    assert!(matches!(err, PoolError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("needs 17 shard(s)") && err.to_string().contains("16 free"));
    let err = volume(&b, "p", "v", 0).unwrap_err();
    assert!(matches!(err, PoolError::InvalidParam { .. }), "{err}");
    let err = volume(&b, "nopool", "v", 1).unwrap_err();
    assert!(matches!(err, PoolError::NotFound(_)), "{err}");
    let err = volume(&b, "p", "Tiny", 1).unwrap_err();
    assert!(
        matches!(err, PoolError::Bdev(BdevError::Exists(_))),
        "{err}"
    );
    assert_eq!(
        pools_json(&b)[0]["generation"],
        generation,
        "nothing was written"
    );
    assert!(b.registry.lookup("big").is_none());

    volume(&b, "p", "v", 16).unwrap();
    let err = volume(&b, "p", "v", 1).unwrap_err();
    assert!(
        matches!(err, PoolError::Bdev(BdevError::Exists(_))),
        "{err}"
    );
    let err = b.pools.delete("p", false).unwrap_err();
    assert!(
        matches!(err, PoolError::Busy(_)) && err.to_string().contains("volume(s) v"),
        "{err}"
    );
    // A claimed volume (an NBD export does this) cannot be deleted.
    b.registry.claim("v", "NBD export 'e'").unwrap();
    let err = b.pools.delete_volume("v").unwrap_err();
    assert!(
        matches!(err, PoolError::Bdev(BdevError::InUse { .. })),
        "{err}"
    );
    assert!(b.pools.volume("v").is_some());
    b.registry.release("v", "NBD export 'e'");
    b.pools.delete_volume("v").unwrap();
    assert!(b.registry.lookup("v").is_none());
    let err = b.pools.delete_volume("v").unwrap_err();
    assert!(matches!(err, PoolError::VolumeNotFound(_)), "{err}");
    b.pools.delete("p", false).unwrap();
    assert_eq!(pools_json(&b), json!([]));
    // The members are free, and their metadata is gone: a new pool needs no force.
    create(&b, "p2", &["A", "B"], 1024).unwrap();
}

#[test]
fn formatting_a_member_of_another_pool_needs_force() {
    let (fa, fb) = files("force");
    let first = boot(&[("A", &fa), ("B", &fb)]);
    create(&first, "old", &["A", "B"], 1024).unwrap();
    volume(&first, "old", "vol", 2).unwrap();
    drop(first);
    let second = boot(&[("A", &fa), ("B", &fb)]);
    let err = create(&second, "new", &["A"], 1024).unwrap_err();
    assert!(
        err.to_string()
            .contains("already carries tidepool metadata"),
        "{err}"
    );
    second
        .pools
        .create(&PoolCreateParams {
            name: "new".into(),
            base_bdevs: vec!["A".into()],
            shard_size_mib: Some(1),
            shard_size_kib: None,
            force: true,
        })
        .unwrap();
    drop(second);
    // A now belongs to "new" alone; B still says "old": they cannot be imported together.
    let third = boot(&[("A", &fa), ("B", &fb)]);
    let err = import(&third, &["A", "B"]).unwrap_err();
    assert!(err.to_string().contains("belongs to pool"), "{err}");
    assert_eq!(import(&third, &["A"]).unwrap(), "new");
    assert!(third.registry.lookup("vol").is_none());
}

#[path = "fault_tests.rs"]
mod faults;

#[path = "read_drain_tests.rs"]
mod read_drain;
