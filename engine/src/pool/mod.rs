//! Pools and volumes: the control path that makes, persists, finds and removes them.
//!
//! A pool claims its member bdevs and keeps its whole description (members, volumes, every
//! shard's extent and owner) in [`metadata`] slots on every member. Every change is written
//! to every present member and flushed before the call that made it returns, and the
//! in-memory state changes only after that succeeded: a call that fails changes nothing
//! (if persisting fails halfway, the previous description is written back, best effort,
//! and the error says so), except that a write that times out, or a write back that does
//! not reach every member, suspends the pool (below).
//!
//! - `pool_create` formats its members (refusing bdevs that already carry tidepool metadata
//!   unless forced), writing the description as generation 1 and then 2 on every member: a
//!   pool found at generation 1 only is one whose creation did not finish, and import
//!   refuses it; `pool_import` finds a pool on its members at start-up, picks the newest
//!   whole generation, brings the pool up degraded when a member is missing (its shards
//!   fail I/O with ENODEV) and rewrites the description to heal torn or stale slots.
//! - `volume_create` places shards with [`placement`] and registers the volume as a bdev
//!   (see [`crate::volume`]); `volume_delete` refuses a volume in use (an NBD export
//!   claims it) and frees its extents.
//! - A metadata write or flush that times out may still land: the call fails with
//!   [`PoolError::Unknown`], nothing is written back to that member (it could race with the
//!   late write), and the pool is suspended: it refuses changes until it is imported again,
//!   which picks the newest whole generation, whichever that turned out to be. A copy whose
//!   commit timed out keeps mirroring the shard's writes to its target meanwhile, since the
//!   late write may place the shard there. A `pool_create` whose write timed out leaves the
//!   pool listed and suspended, its members claimed (formatted again, they could take the
//!   late write over a new pool), and out of `save_config`.
//! - `pool_delete` first writes a generation that marks the pool for deletion, then wipes
//!   both slots of every member (the marked one last); an import that finds the mark (a
//!   crash part-way) finishes the deletion. If a wipe fails partway, the pool's
//!   description is written back (best effort) to every member but one whose wipe timed
//!   out, at a newer generation, and the pool stays.
//!
//! Control calls are serialized by one mutex; metadata I/O runs on reactor 0 through
//! [`Engine::read_blocks`] and friends, with deadlines.
//!
//! Here: create, delete and volumes. Beside it: `slots` (reading, persisting and wiping
//! the members' descriptions), `import` (finding a pool on its members), `report`
//! (listings, `save_config`, and the members and volumes other parts read), `remove`
//! (`pool_remove_bdev`), `migrate` and `copy_driver` (moving shards), [`placement`],
//! [`metadata`] (the slots' format) and [`crc32c`].

mod copy_driver;
pub mod crc32c;
pub(crate) mod import;
pub mod metadata;
mod migrate;
pub mod placement;
mod remove;
mod report;
mod slots;

pub use copy_driver::MigrationOptions;
pub use migrate::ShardMigrateParams;
pub use remove::PoolRemoveBdevParams;

use crate::bdev::{new_uuid, BdevError, BdevId, BdevInfo, BdevRegistry, IoType, IoTypeSet};
use crate::reactor::{BlockingIoError, Engine};
use crate::volume::{ShardRoute, ShardState, Volume, VolumeBdev};
use metadata::{MemberRecord, PoolRecord, ShardRecord, VolumeRecord, DATA_START_BYTES};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadline of one metadata I/O.
const IO_DEADLINE: Duration = Duration::from_secs(10);
/// Most members in one pool.
pub const MAX_MEMBERS: usize = 64;
/// Default shard size.
pub const DEFAULT_SHARD_SIZE_MIB: u64 = 64;
/// Shards one member may hold (64 TiB in 64 MiB shards): placement keeps a flag per extent,
/// so tiny shards on a big member would cost memory on every placement decision.
pub const MAX_EXTENTS_PER_MEMBER: u64 = 1 << 20;
/// Longest pool or volume name.
const MAX_NAME_LEN: usize = 128;
/// What a member must support: reads and writes carry the data and the metadata, a flush
/// makes them durable.
const MEMBER_NEEDS: [IoType; 3] = [IoType::Read, IoType::Write, IoType::Flush];
/// Largest shard: 1 TiB.
const MAX_SHARD_BYTES: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool '{0}' already exists")]
    Exists(String),
    #[error("pool '{0}' not found")]
    NotFound(String),
    #[error("volume '{0}' not found")]
    VolumeNotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Degraded(String),
    #[error("{0}")]
    NoPool(String),
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error("{0}")]
    Io(String),
    /// A metadata write or flush did not complete in time and may still land: its outcome is
    /// unknown until the pool is imported again.
    #[error("{0}")]
    Unknown(String),
    /// The pool refuses changes (see [`PoolError::Unknown`]).
    #[error("{0}")]
    Suspended(String),
}

fn invalid(param: &'static str, reason: impl Into<String>) -> PoolError {
    PoolError::InvalidParam {
        param,
        reason: reason.into(),
    }
}

fn check_name(param: &'static str, name: &str) -> Result<(), PoolError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            param,
            format!("'{name}' must be 1 to {MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(())
}

/// `pool_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCreateParams {
    pub name: String,
    pub base_bdevs: Vec<String>,
    /// Shard size in MiB (default 64); or give `shard_size_kib`.
    #[serde(default)]
    pub shard_size_mib: Option<u64>,
    #[serde(default)]
    pub shard_size_kib: Option<u64>,
    /// Format members that already carry tidepool metadata.
    #[serde(default)]
    pub force: bool,
}

/// `volume_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateParams {
    pub pool: String,
    pub name: String,
    pub size_mib: u64,
}

/// A present member of a pool: where it is, its room, and whether it may take a shard.
#[derive(Clone, Debug)]
pub struct MemberState {
    pub pool: String,
    pub bdev: BdevId,
    pub name: String,
    pub free_extents: u64,
    /// Not being drained, not flagged by an abandoned copy, its pool not suspended.
    pub open: bool,
}

/// A pool that is up.
struct Pool {
    record: PoolRecord,
    generation: u64,
    /// Registry id of each member, by member index; `None` for a missing member.
    members: Vec<Option<BdevId>>,
    volumes: BTreeMap<String, (BdevId, Arc<Volume>)>,
    /// Extents out of use though no shard is placed there, as (member index, extent):
    /// targets of copies in progress, and extents a write may still land on until a restart
    /// (an abandoned copy's stalled target, a clear that timed out).
    reserved: Vec<(u32, u64)>,
    /// Source extents of shards that moved, out of use until the reads routed to them
    /// before the move have come back (see `copy_driver`, issue 26's finding 3).
    old_sources: Vec<(u32, u64)>,
    /// The member being emptied by `pool_remove_bdev`, and why the drain stopped if it did.
    draining: Option<(u32, Option<String>)>,
    /// Why the pool refuses changes: a metadata write timed out and may still land, so
    /// neither the old description nor the new one is known to be on the members; writing
    /// either could race with it. Cleared by importing the pool again (a restart).
    suspended: Option<String>,
    /// `pool_create` itself timed out: the members may hold this pool or nothing. Such a
    /// pool keeps its members claimed and suspended, and is left out of `save_config` (its
    /// `pool_import` could fail the next start-up); `pool_import` finds it if it landed.
    creation_unknown: bool,
}

impl Pool {
    /// Refuses a change while the pool is suspended.
    fn check_changes_allowed(&self) -> Result<(), PoolError> {
        match &self.suspended {
            Some(why) => Err(PoolError::Suspended(format!(
                "pool '{}' refuses changes until it is imported again (restart the daemon): {why}",
                self.record.name
            ))),
            None => Ok(()),
        }
    }

    /// Suspends the pool if `e`, the failure of a metadata write, leaves its outcome
    /// unknown ([`PoolError::Unknown`]); says whether it did.
    fn suspend_if_unknown(&mut self, e: &PoolError) -> bool {
        if !matches!(e, PoolError::Unknown(_)) {
            return false;
        }
        log::error!(
            "pool '{}': suspended, it refuses changes until it is imported again: {e}",
            self.record.name
        );
        self.suspended = Some(e.to_string());
        true
    }

    /// The index the present member `id` has now (a member removal renumbers the rest).
    fn member_index_of(&self, id: BdevId) -> Option<u32> {
        self.members
            .iter()
            .position(|m| *m == Some(id))
            .map(|i| i as u32)
    }

    fn degraded(&self) -> bool {
        self.members.iter().any(Option::is_none)
    }

    /// The names the description gives the members that are missing.
    fn missing_names(&self) -> Vec<&str> {
        (self.members.iter())
            .zip(&self.record.members)
            .filter(|(id, _)| id.is_none())
            .map(|(_, m)| m.bdev_name.as_str())
            .collect()
    }

    fn present(&self) -> Vec<bool> {
        self.members.iter().map(Option::is_some).collect()
    }

    /// Members that may take new shards: present and not being drained.
    fn open_members(&self) -> Vec<bool> {
        let mut open = self.present();
        if let Some((m, _)) = self.draining {
            open[m as usize] = false;
        }
        open
    }

    fn claim_name(&self) -> String {
        format!("pool '{}'", self.record.name)
    }

    /// Where volume `name`, which this pool holds, is in its record.
    fn record_index(&self, name: &str) -> usize {
        self.record
            .volumes
            .iter()
            .position(|v| v.name == name)
            .expect("a pool's volume is in its record")
    }
}

/// The pool that holds volume `name`.
fn pool_of<'a>(
    pools: &'a mut BTreeMap<String, Pool>,
    name: &str,
) -> Result<&'a mut Pool, PoolError> {
    pools
        .values_mut()
        .find(|pool| pool.volumes.contains_key(name))
        .ok_or_else(|| PoolError::VolumeNotFound(name.to_string()))
}

pub struct PoolService {
    engine: Arc<Engine>,
    registry: Arc<BdevRegistry>,
    pools: Mutex<BTreeMap<String, Pool>>,
    /// Data migrations, running and recent (see `copy_driver`).
    migrations: copy_driver::Migrations,
    /// The deadline of one metadata I/O, in ms.
    deadline_ms: AtomicU64,
    /// Tests: runs in `pool_delete` between the marking generation and the wipes.
    #[cfg(test)]
    before_wipe: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Tests: runs in a data migration's commit once the shard is frozen, before the new
    /// placement is written and the route flips.
    #[cfg(test)]
    before_flip: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl PoolService {
    pub fn new(engine: Arc<Engine>, registry: Arc<BdevRegistry>) -> PoolService {
        PoolService {
            engine,
            registry,
            pools: Mutex::new(BTreeMap::new()),
            migrations: copy_driver::Migrations::default(),
            deadline_ms: AtomicU64::new(IO_DEADLINE.as_millis() as u64),
            #[cfg(test)]
            before_wipe: Mutex::new(None),
            #[cfg(test)]
            before_flip: Mutex::new(None),
        }
    }

    /// How long one metadata I/O may take ([`IO_DEADLINE`]; tests shorten it).
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn set_before_wipe(&self, f: impl Fn() + Send + 'static) {
        *self.before_wipe.lock().unwrap() = Some(Box::new(f));
    }

    #[cfg(test)]
    fn set_deadline(&self, d: Duration) {
        self.deadline_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks the members named in a create or import call: devices, named once, present,
    /// able to do what a member does ([`MEMBER_NEEDS`]), not claimed.
    fn members_for(&self, names: &[String]) -> Result<Vec<(BdevId, BdevInfo)>, PoolError> {
        if names.is_empty() || names.len() > MAX_MEMBERS {
            return Err(invalid(
                "base_bdevs",
                format!("give 1 to {MAX_MEMBERS} bdev names"),
            ));
        }
        let listed = self.registry.list();
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(invalid("base_bdevs", format!("'{name}' is named twice")));
            }
            let l = listed
                .iter()
                .find(|l| &l.bdev.info().name == name)
                .ok_or_else(|| BdevError::NotFound(name.clone()))?;
            if crate::volume::VolumeBdev::of(&*l.bdev).is_some() {
                return Err(invalid(
                    "base_bdevs",
                    format!("'{name}' is a volume; pools are made of devices"),
                ));
            }
            let supported = l.bdev.info().supported;
            if let Some(t) = MEMBER_NEEDS.iter().find(|t| !supported.contains(**t)) {
                return Err(invalid(
                    "base_bdevs",
                    format!(
                        "'{name}' does not support {} I/O; a pool member must read, write \
                         and flush (its metadata is flushed on every change)",
                        t.name()
                    ),
                ));
            }
            if let Some(user) = &l.claimed_by {
                return Err(BdevError::InUse {
                    name: name.clone(),
                    user: user.clone(),
                }
                .into());
            }
            out.push((l.id, l.bdev.info().clone()));
        }
        Ok(out)
    }

    /// Claims every member for `user`; all or nothing.
    fn claim_all(&self, members: &[(BdevId, String)], user: &str) -> Result<(), PoolError> {
        for (i, (_, name)) in members.iter().enumerate() {
            if let Err(e) = self.registry.claim(name, user) {
                for (_, done) in &members[..i] {
                    self.registry.release(done, user);
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    pub fn create(&self, p: &PoolCreateParams) -> Result<(), PoolError> {
        check_name("name", &p.name)?;
        // The parameter the size came from, for messages, as the user gave it.
        let (param, given, shard_bytes) = match (p.shard_size_mib, p.shard_size_kib) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "shard_size_mib",
                    "give shard_size_mib or shard_size_kib, not both",
                ))
            }
            (_, Some(kib)) => (
                "shard_size_kib",
                format!("{kib} KiB"),
                kib.checked_mul(1024),
            ),
            (mib, None) => {
                let mib = mib.unwrap_or(DEFAULT_SHARD_SIZE_MIB);
                (
                    "shard_size_mib",
                    format!("{mib} MiB"),
                    mib.checked_mul(1 << 20),
                )
            }
        };
        let shard_bytes = match shard_bytes {
            Some(b) if b > 0 && b <= MAX_SHARD_BYTES => b,
            _ => {
                return Err(invalid(
                    param,
                    format!("{given} is not from 1 byte to 1 TiB"),
                ))
            }
        };
        let mut pools = self.lock();
        if pools.contains_key(&p.name) {
            return Err(PoolError::Exists(p.name.clone()));
        }
        let found = self.members_for(&p.base_bdevs)?;
        let bs = found[0].1.block_size;
        if let Some((_, other)) = found.iter().find(|(_, i)| i.block_size != bs) {
            return Err(invalid(
                "base_bdevs",
                format!(
                    "'{}' has {}-byte blocks and '{}' {bs}-byte blocks; members must agree",
                    other.name, other.block_size, found[0].1.name
                ),
            ));
        }
        if shard_bytes % bs as u64 != 0 {
            return Err(invalid(
                param,
                format!("{given} is not a multiple of the {bs}-byte block"),
            ));
        }
        let shard_blocks = shard_bytes / bs as u64;
        let mut members = Vec::new();
        for (_, info) in &found {
            let bytes = info.num_blocks * bs as u64;
            let extents = bytes.saturating_sub(DATA_START_BYTES) / shard_bytes;
            if extents > MAX_EXTENTS_PER_MEMBER {
                return Err(invalid(
                    param,
                    format!(
                        "'{}' would hold {extents} shards of {given}; a member holds \
                         at most {MAX_EXTENTS_PER_MEMBER}: use larger shards",
                        info.name
                    ),
                ));
            }
            if extents == 0 {
                return Err(invalid(
                    "base_bdevs",
                    format!(
                        "'{}' ({bytes} bytes) cannot hold the metadata ({DATA_START_BYTES} \
                         bytes) and one {shard_bytes}-byte shard",
                        info.name
                    ),
                ));
            }
            members.push(MemberRecord {
                bdev_name: info.name.clone(),
                uuid: new_uuid(),
                absent_since: None,
                num_blocks: info.num_blocks,
                extents,
            });
        }
        check_description_fits(param, &p.name, bs, shard_blocks, &members)?;
        let user = format!("pool '{}'", p.name);
        let claimed: Vec<(BdevId, String)> =
            found.iter().map(|(id, i)| (*id, i.name.clone())).collect();
        self.claim_all(&claimed, &user)?;
        let release = || {
            for (_, name) in &claimed {
                self.registry.release(name, &user);
            }
        };
        let record = PoolRecord {
            name: p.name.clone(),
            uuid: new_uuid(),
            block_size: bs,
            shard_blocks,
            members,
            volumes: Vec::new(),
            deleting: false,
        };
        let ids: Vec<Option<BdevId>> = found.iter().map(|(id, _)| Some(*id)).collect();
        let result = (|| {
            if !p.force {
                for (id, info) in &found {
                    if self.has_metadata(*id, bs)? {
                        return Err(PoolError::Busy(format!(
                            "bdev '{}' already carries tidepool metadata; pass force: true \
                             to format it",
                            info.name
                        )));
                    }
                }
            }
            // Generation 1 goes to slot 1; slot 0 is wiped so that a forced format leaves
            // nothing of an older pool behind. Then the same description again as generation
            // 2, once every member has 1: a pool whose newest generation is 1 is one whose
            // creation did not finish (a crash between members), and import refuses it.
            self.wipe(&ids, bs, &[0])?;
            for generation in [1, 2] {
                if let Err(e) = self.write_generation(&record, generation, &ids) {
                    // Leave no half-written pool behind (best effort): a retry without
                    // `force` would be refused for metadata this failed call wrote. Not after
                    // a write whose outcome is unknown: a wipe would race with it.
                    if !matches!(e, PoolError::Unknown(_)) {
                        let _ = self.wipe(&ids, bs, &[0, 1]);
                    }
                    return Err(e);
                }
            }
            Ok(())
        })();
        let mut pool = Pool {
            record,
            generation: 2,
            members: ids,
            volumes: BTreeMap::new(),
            reserved: Vec::new(),
            old_sources: Vec::new(),
            draining: None,
            suspended: None,
            creation_unknown: false,
        };
        match result {
            Ok(()) => {
                log::info!(
                    "pool '{}': created on {} with {} KiB shards",
                    p.name,
                    p.base_bdevs.join(", "),
                    shard_bytes >> 10
                );
                pools.insert(p.name.clone(), pool);
                Ok(())
            }
            Err(e) if pool.suspend_if_unknown(&e) => {
                // A write that may still land keeps its members: released, they could be
                // formatted again (`force`) and the late write land over the new pool.
                pool.creation_unknown = true;
                pools.insert(p.name.clone(), pool);
                Err(e)
            }
            Err(e) => {
                release();
                Err(e)
            }
        }
    }

    /// Makes the volume of `v` and registers it as a bdev.
    fn register_volume(&self, pool: &mut Pool, v: &VolumeRecord) -> Result<(), PoolError> {
        let reactors = self.engine.reactor_count();
        let record = &pool.record;
        let mut supported = IoTypeSet::all();
        let routes = v
            .shards
            .iter()
            .map(|s| {
                let member = pool.members[s.member as usize];
                if let Some(bdev) = member.and_then(|id| self.registry.get(id)) {
                    supported = supported.intersect(bdev.info().supported);
                }
                ShardRoute {
                    owner: s.owner % reactors as u16,
                    member: member.unwrap_or(BdevId::MAX),
                    member_name: record.members[s.member as usize].bdev_name.clone(),
                    offset_blocks: DATA_START_BYTES / record.block_size as u64
                        + s.extent * record.shard_blocks,
                    state: if member.is_some() {
                        ShardState::Online
                    } else {
                        ShardState::Unavailable
                    },
                }
            })
            .collect();
        let info = BdevInfo {
            name: v.name.clone(),
            product_name: crate::volume::PRODUCT_NAME,
            block_size: record.block_size,
            num_blocks: v.num_blocks,
            uuid: v.uuid.clone(),
            supported,
        };
        let volume = Arc::new(Volume::new(info, &record.name, record.shard_blocks, routes));
        let id = self
            .registry
            .register(Arc::new(VolumeBdev::new(Arc::clone(&volume))))?;
        pool.volumes.insert(v.name.clone(), (id, volume));
        Ok(())
    }

    pub fn delete(&self, name: &str, force: bool) -> Result<(), PoolError> {
        let mut pools = self.lock();
        let pool = pools
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.to_string()))?;
        pool.check_changes_allowed()?;
        // A missing member keeps the pool's description: back, it would bring the pool (and
        // the volumes it held) back with it. Deleting anyway is for a member that is gone
        // for good.
        let missing = pool.missing_names();
        if !missing.is_empty() && !force {
            return Err(PoolError::Busy(format!(
                "pool '{name}' is degraded ({} missing): its description stays on what is \
                 missing, which would bring the pool back when it returns; bring it back \
                 first, or delete with force: true if it is gone for good",
                missing.join(", ")
            )));
        }
        if !pool.volumes.is_empty() {
            let names: Vec<&str> = pool.volumes.keys().map(String::as_str).collect();
            return Err(PoolError::Busy(format!(
                "pool '{name}' holds volume(s) {}; delete them first",
                names.join(", ")
            )));
        }
        // An extent still reserved (no volume, so no copy runs) is an abandoned copy's, whose
        // write may still land: the members must not go to another user before a restart.
        if !pool.reserved.is_empty() {
            return Err(PoolError::Busy(format!(
                "pool '{name}': a write from an abandoned copy may still land on a member; \
                 delete the pool after a restart"
            )));
        }
        // First a generation that marks the pool for deletion, on every member: an import
        // after a crash part-way through the wipes finishes the deletion rather than bringing
        // back the generation before it (a deleted volume, or a degraded pool). Then each
        // member's older slot, then the marked one.
        let pool = pools.get_mut(name).expect("looked up above");
        let mut marked = pool.record.clone();
        marked.deleting = true;
        self.persist(pool, marked)?;
        #[cfg(test)]
        if let Some(f) = self.before_wipe.lock().unwrap().as_ref() {
            f();
        }
        let newest = metadata::slot_of(pool.generation);
        if let Err((stopped_at, e)) =
            self.wipe_in_order(&pool.members, pool.record.block_size, &[1 - newest, newest])
        {
            // Members wiped before the failure would come back without the pool, and the
            // others with it: write the description back (best effort) and keep the pool, as
            // a failed change does. Not to the member whose wipe timed out: that wipe may
            // still land, and the pool is suspended.
            let pool = pools.get_mut(name).expect("looked up above");
            pool.record.deleting = false;
            let unknown = matches!(e, PoolError::Unknown(_));
            let written_back = self.write_back(pool, |i| !(unknown && i == stopped_at));
            if pool.suspend_if_unknown(&e) {
                return Err(e);
            }
            if !written_back {
                // A member that did not take it keeps the mark: an import may finish the
                // deletion (see `slots`).
                let e = PoolError::Unknown(format!(
                    "pool '{name}' not deleted: {e}; writing its description back failed on \
                     a member, so the next import may finish the deletion"
                ));
                pool.suspend_if_unknown(&e);
                return Err(e);
            }
            log::error!("pool '{name}': not deleted: {e}");
            return Err(PoolError::Io(format!("pool '{name}' not deleted: {e}")));
        }
        let pool = pools.remove(name).expect("looked up above");
        let user = pool.claim_name();
        for m in &pool.record.members {
            self.registry.release(&m.bdev_name, &user);
        }
        log::info!("pool '{name}': deleted; its members are free");
        Ok(())
    }

    pub fn create_volume(&self, p: &VolumeCreateParams) -> Result<(), PoolError> {
        check_name("name", &p.name)?;
        let mut pools = self.lock();
        let pool = pools
            .get_mut(&p.pool)
            .ok_or_else(|| PoolError::NotFound(p.pool.clone()))?;
        if self.registry.lookup(&p.name).is_some() {
            return Err(BdevError::Exists(p.name.clone()).into());
        }
        pool.check_changes_allowed()?;
        if pool.degraded() {
            return Err(PoolError::Degraded(format!(
                "pool '{}' is degraded (a member is missing); new volumes need every member",
                p.pool
            )));
        }
        let bs = pool.record.block_size as u64;
        let bytes = p
            .size_mib
            .checked_mul(1 << 20)
            .filter(|&b| b > 0 && b / bs <= u32::MAX as u64 * pool.record.shard_blocks)
            .ok_or_else(|| invalid("size_mib", format!("{} is not a usable size", p.size_mib)))?;
        let num_blocks = bytes / bs;
        let shards = num_blocks.div_ceil(pool.record.shard_blocks) as usize;
        let placed = placement::place(
            &pool.record,
            shards,
            self.engine.reactor_count(),
            &pool.open_members(),
            &pool.taken(),
        )
        .map_err(|free| {
            let shard_mib = (pool.record.shard_blocks * bs) >> 20;
            PoolError::NoSpace(format!(
                "volume '{}' of {} MiB needs {shards} shard(s) of {shard_mib} MiB; pool '{}' \
                 has {free} free",
                p.name, p.size_mib, p.pool
            ))
        })?;
        self.clear_extents(pool, &placed)?;
        let volume = VolumeRecord {
            name: p.name.clone(),
            uuid: new_uuid(),
            num_blocks,
            shards: placed,
        };
        let mut record = pool.record.clone();
        record.volumes.push(volume.clone());
        self.persist(pool, record)?;
        if let Err(e) = self.register_volume(pool, &volume) {
            // Cannot happen while the lock is held and the name was checked; undo anyway.
            let mut record = pool.record.clone();
            record.volumes.retain(|v| v.name != p.name);
            let _ = self.persist(pool, record);
            return Err(e);
        }
        log::info!(
            "volume '{}': {} MiB in {shards} shard(s) on pool '{}'",
            p.name,
            p.size_mib,
            p.pool
        );
        Ok(())
    }

    /// Clears the extents a new volume will take, so that it reads zeroes rather than what a
    /// deleted volume left there (SPDK's lvols clear by default too): write-zeroes where a
    /// member has it, else unmap (zeroes on malloc and on uring files and devices), else
    /// nothing (a null member). Nothing names the extents yet, so a failure changes nothing;
    /// but a clear that timed out may still land, over the data of a volume given those
    /// extents later: they stay reserved until a restart.
    fn clear_extents(&self, pool: &mut Pool, placed: &[ShardRecord]) -> Result<(), PoolError> {
        let shard_blocks = pool.record.shard_blocks;
        let first_block = DATA_START_BYTES / pool.record.block_size as u64;
        for s in placed {
            let Some(id) = pool.members[s.member as usize] else {
                continue; // Not reached: new volumes need every member.
            };
            let supported = self.registry.get(id).map(|b| b.info().supported);
            let how = match supported {
                Some(t) if t.contains(IoType::WriteZeroes) => IoType::WriteZeroes,
                Some(t) if t.contains(IoType::Unmap) => IoType::Unmap,
                _ => continue,
            };
            let at = first_block + s.extent * shard_blocks;
            let cleared =
                self.engine
                    .clear_blocks(id, how, at, shard_blocks as u32, self.deadline());
            if let Err(e) = cleared {
                let name = &pool.record.members[s.member as usize].bdev_name;
                let what = format!(
                    "clearing extent {} of '{name}' for the new volume",
                    s.extent
                );
                if matches!(e, BlockingIoError::Timeout(_)) {
                    pool.reserved.push((s.member, s.extent));
                    return Err(PoolError::Io(format!(
                        "{what}: {e}; it may still land, so the extent stays out of use until \
                         a restart"
                    )));
                }
                return Err(PoolError::Io(format!("{what}: {e}")));
            }
        }
        Ok(())
    }

    /// `volume_delete`. Either the volume is gone everywhere (registry, routing, the
    /// placement on every member) or, on any error, it is still there as it was.
    pub fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let mut pools = self.lock();
        let pool = pool_of(&mut pools, name)?;
        pool.check_changes_allowed()?;
        let (id, volume) = pool.volumes[name].clone();
        // Copies register under the pools lock, so none can start while this runs.
        if self.migrations.running_for_volume(name) {
            return Err(PoolError::Busy(format!(
                "volume '{name}' has a shard migrating; delete it once that is done"
            )));
        }
        // Refused here, changing nothing, while an NBD export (or anything) claims it.
        let bdev = self.registry.unregister(name)?;
        let outcome = match self.engine.close_channels(id, IO_DEADLINE) {
            Err(e) => Err(PoolError::Io(e.to_string())),
            // Freeing the extents under I/O that may still land would let a later volume
            // be written by it.
            Ok(open) if open > 0 => Err(PoolError::Busy(format!(
                "volume '{name}': {open} reactor(s) still hold its I/O after {} s; \
                 it was not deleted",
                IO_DEADLINE.as_secs()
            ))),
            Ok(_) => {
                let mut record = pool.record.clone();
                record.volumes.retain(|v| v.name != name);
                self.persist(pool, record)
            }
        };
        if let Err(e) = outcome {
            // Back as it was, under a new bdev id (reactors open it afresh).
            let id = self.registry.register(bdev)?;
            pool.volumes.insert(name.to_string(), (id, volume));
            return Err(e);
        }
        pool.volumes.remove(name);
        log::info!("volume '{name}': deleted");
        Ok(())
    }
}

/// Refuses a pool whose description could not hold one volume filling it (a slot holds
/// [`SLOT_BYTES`]; each shard takes some 40 bytes of it): its capacity would be
/// advertised and never usable.
fn check_description_fits(
    param: &'static str,
    name: &str,
    block_size: u32,
    shard_blocks: u64,
    members: &[MemberRecord],
) -> Result<(), PoolError> {
    let shards = members
        .iter()
        .enumerate()
        .flat_map(|(m, r)| {
            (0..r.extents).map(move |extent| ShardRecord {
                member: m as u32,
                extent,
                owner: 0,
            })
        })
        .collect::<Vec<_>>();
    let full = PoolRecord {
        name: name.to_string(),
        uuid: new_uuid(),
        block_size,
        shard_blocks,
        members: members.to_vec(),
        volumes: vec![VolumeRecord {
            name: "v".repeat(MAX_NAME_LEN),
            uuid: new_uuid(),
            num_blocks: shards.len() as u64 * shard_blocks,
            shards,
        }],
        deleting: false,
    };
    match metadata::encode(&full, 0, 1, block_size) {
        Ok(_) => Ok(()),
        Err(e) => Err(invalid(
            param,
            format!(
                "{} shards of {} KiB: the pool's description, full, would not fit its \
                 metadata slot ({e}); use larger shards",
                full.volumes[0].shards.len(),
                shard_blocks * block_size as u64 / 1024
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
