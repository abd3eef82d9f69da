//! `pool_import`: bringing a pool up from the descriptions on its members (at start-up, or
//! again after a suspension).
//!
//! Import reads both metadata slots of every named bdev, takes the newest whole generation
//! of the pool's description, matches members by the member uuid their own slot gives them
//! (by name for pools made before member uuids; so a member that missed a renumbering, or
//! whose device name shifted, is still taken back), and comes up degraded when a
//! member is missing, marking it absent from that generation on. It then rewrites the
//! description on every present member at a generation newer than any a missing member may
//! hold, in the slot other than the newest whole one, healing torn or stale slots. It
//! refuses: a pool whose creation did not finish (generation 1 only), an import that leaves
//! out a present member, and a pool that was divided (changed in two parts, each without
//! the other; see [`divided`]) unless forced. A pool marked for deletion is deleted.
//!
//! The choice itself ([`choose`]: which description, which bdev is which member, which
//! refusals) does no I/O; the simulator's imports after its crashes go through it too.

use super::metadata::{self, PoolRecord, Slot};
use super::{invalid, Pool, PoolError, PoolService, MAX_MEMBERS};
use crate::bdev::{BdevError, BdevId};
use std::collections::BTreeMap;

impl PoolService {
    /// Refuses an import that leaves out a member that is present: the pool would come up
    /// degraded without it, the bdev unclaimed (an export or another pool could write over
    /// its shards), and nothing could add it back until the pool is imported again.
    fn check_no_member_left_out(
        &self,
        record: &PoolRecord,
        members: &[Option<BdevId>],
        base_bdevs: &[String],
    ) -> Result<(), PoolError> {
        for (index, m) in record.members.iter().enumerate() {
            if members[index].is_some() || base_bdevs.contains(&m.bdev_name) {
                continue;
            }
            let Some((id, bdev)) = self.registry.lookup(&m.bdev_name) else {
                continue;
            };
            // Known as import takes members back (see `Slot::index_in`).
            let holds_it = self
                .read_newest(id, bdev.info().block_size)
                .ok()
                .flatten()
                .is_some_and(|s| s.record.uuid == record.uuid && s.index_in(record) == Some(index));
            if holds_it {
                return Err(invalid(
                    "base_bdevs",
                    format!(
                        "'{}' is member {index} of pool '{}' and is present: list every \
                         present member (left out, it would stay unclaimed and the pool \
                         degraded)",
                        m.bdev_name, record.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `pool_import`: brings up the pool on `base_bdevs` from the newest description on them.
    /// `force` keeps that description even where the pool was divided (see `divided` below):
    /// what the other part saw since is lost.
    pub fn import(&self, base_bdevs: &[String], force: bool) -> Result<String, PoolError> {
        if base_bdevs.is_empty() || base_bdevs.len() > MAX_MEMBERS {
            return Err(invalid(
                "base_bdevs",
                format!("give 1 to {MAX_MEMBERS} bdev names"),
            ));
        }
        let present: Vec<String> = base_bdevs
            .iter()
            .filter(|n| self.registry.lookup(n).is_some())
            .cloned()
            .collect();
        if present.is_empty() {
            return Err(PoolError::NoPool(format!(
                "none of {} exists",
                base_bdevs.join(", ")
            )));
        }
        let found = self.members_for(&present)?;
        let mut slots: Vec<(BdevId, String, Slot)> = Vec::new();
        for (id, info) in &found {
            match self.read_newest(*id, info.block_size)? {
                Some(slot) => slots.push((*id, info.name.clone(), slot)),
                None => log::warn!(
                    "pool_import: '{}' holds no readable pool metadata; treated as missing",
                    info.name
                ),
            }
        }
        let (generation, record, members) = match choose(slots, base_bdevs, force)? {
            Choice::Delete {
                record,
                generation,
                holders,
            } => {
                // pool_delete stopped part-way (a crash): finish it. The marked slot goes
                // last.
                let ids: Vec<Option<BdevId>> = holders.into_iter().map(Some).collect();
                let last = metadata::slot_of(generation);
                let finished = self.wipe(&ids, record.block_size, &[1 - last, last]);
                return Err(PoolError::NoPool(match finished {
                    Ok(()) => format!(
                        "pool '{}' was being deleted when tidepool stopped; the deletion is \
                         finished now",
                        record.name
                    ),
                    Err(e) => format!(
                        "pool '{}' was being deleted when tidepool stopped; finishing the \
                         deletion failed: {e}",
                        record.name
                    ),
                }));
            }
            Choice::Bring {
                generation,
                record,
                members,
            } => (generation, record, members),
        };
        for (index, id) in members.iter().enumerate() {
            let Some((_, info)) = id.and_then(|id| found.iter().find(|(f, _)| *f == id)) else {
                continue;
            };
            let was = &record.members[index];
            if info.block_size != record.block_size || info.num_blocks < was.num_blocks {
                return Err(invalid(
                    "base_bdevs",
                    format!(
                        "'{}' has {} blocks of {} bytes; as member {index} of pool '{}' it had \
                         {} blocks of {} bytes",
                        info.name,
                        info.num_blocks,
                        info.block_size,
                        record.name,
                        was.num_blocks,
                        record.block_size
                    ),
                ));
            }
        }
        self.check_no_member_left_out(&record, &members, base_bdevs)?;
        let claimed: Vec<(BdevId, String)> = (members.iter().zip(&record.members))
            .filter_map(|(id, m)| id.map(|id| (id, m.bdev_name.clone())))
            .collect();
        let mut pools = self.lock();
        if pools.contains_key(&record.name) {
            return Err(PoolError::Exists(record.name.clone()));
        }
        for v in &record.volumes {
            if self.registry.lookup(&v.name).is_some() {
                return Err(BdevError::Exists(v.name.clone()).into());
            }
        }
        let user = format!("pool '{}'", record.name);
        self.claim_all(&claimed, &user)?;
        // The rewrite below skips two generations. Generation + 1 may be on a member that
        // is not here (written there just before a crash, not yet elsewhere): writing another
        // description as generation + 1 would make two of one generation, and a later import
        // would pick between them by the order of its list. Generation + 2 would go to the
        // slot that holds the newest whole description; + 3 is newer than both and goes to
        // the other slot.
        let mut pool = Pool {
            record: record.clone(),
            generation: generation + 2,
            members,
            volumes: BTreeMap::new(),
            reserved: Vec::new(),
            old_sources: Vec::new(),
            draining: None,
            suspended: None,
            creation_unknown: false,
        };
        // Rewrite the description at a new generation: heals a torn slot, a member that
        // missed the last update, and records the members' current names.
        let registered = self.persist(&mut pool, record).and_then(|()| {
            let volumes = pool.record.volumes.clone();
            for v in &volumes {
                self.register_volume(&mut pool, v)?;
            }
            Ok(())
        });
        if let Err(e) = registered {
            let names: Vec<String> = pool.volumes.keys().cloned().collect();
            for name in names {
                let _ = self.registry.unregister(&name);
            }
            for (_, name) in &claimed {
                self.registry.release(name, &user);
            }
            return Err(e);
        }
        let name = pool.record.name.clone();
        let missing = pool.missing_names();
        if missing.is_empty() {
            log::info!(
                "pool '{name}': imported at generation {} with {} volume(s)",
                pool.generation,
                pool.volumes.len()
            );
        } else {
            log::warn!(
                "pool '{name}': imported DEGRADED, missing {}; their shards fail I/O",
                missing.join(", ")
            );
        }
        pools.insert(name.clone(), pool);
        Ok(name)
    }
}

/// What an import does with the slots it found.
#[derive(Debug)]
pub(crate) enum Choice<K> {
    /// The newest description marks the pool for deletion (`pool_delete` stopped part-way):
    /// finish it on the bdevs that hold the pool.
    Delete {
        record: PoolRecord,
        generation: u64,
        holders: Vec<K>,
    },
    /// Bring the pool up from `record` (generation `generation`): `members[i]` holds member
    /// `i` (its name in `record` is the bdev's now), `None` where it is missing, and such a
    /// member is marked absent from `generation` on (unless it already was).
    Bring {
        record: PoolRecord,
        generation: u64,
        members: Vec<Option<K>>,
    },
}

/// Import's choice, with no I/O: from the newest valid slot each bdev holds (`(key, name,
/// slot)`, `key` naming the bdev to the caller), the description to bring up and which bdev
/// is which member. Refuses (changing nothing): no slot at all, a pool whose creation did not
/// finish, a bdev of another pool, two bdevs claiming one member, and a divided pool unless
/// `force`. The simulator (`sim::persist`) imports through this too.
pub(crate) fn choose<K: Copy>(
    mut slots: Vec<(K, String, Slot)>,
    base_bdevs: &[String],
    force: bool,
) -> Result<Choice<K>, PoolError> {
    let Some(best) = slots.iter().max_by_key(|(_, _, s)| s.generation) else {
        return Err(PoolError::NoPool(format!(
            "no tidepool pool metadata on {}",
            base_bdevs.join(", ")
        )));
    };
    let (generation, mut record) = (best.2.generation, best.2.record.clone());
    if generation == 1 {
        // See `create`: generation 2 follows 1 on every member before pool_create returns.
        return Err(PoolError::NoPool(format!(
            "pool '{}' on {}: its pool_create did not finish (generation 1 only); make it \
             again with pool_create and force: true",
            record.name,
            base_bdevs.join(", ")
        )));
    }
    if let Some((_, name, s)) = slots.iter().find(|(_, _, s)| s.record.uuid != record.uuid) {
        return Err(invalid(
            "base_bdevs",
            format!(
                "'{name}' belongs to pool '{}' ({}), not '{}' ({})",
                s.record.name, s.record.uuid, record.name, record.uuid
            ),
        ));
    }
    if record.deleting {
        let holders = slots.iter().map(|(key, _, _)| *key).collect();
        return Ok(Choice::Delete {
            record,
            generation,
            holders,
        });
    }
    // A member's slot is trusted where the chosen record lists the same bdev at its index:
    // a slot left on a bdev that was removed from the pool (its wipe failed, or the process
    // died before it) names an older numbering, and must not stand in for the member that
    // now holds that index.
    //
    // A member is known by the identity its own slot gives it (`Slot::index_in`), and takes
    // the index the chosen record gives it: a member that missed a renumbering (a crash
    // during `pool_remove_bdev`'s last write) holds its old index, and must not be lost for
    // it; a bdev that took a missing member's name must not stand in for it.
    let chosen = record.clone();
    slots.retain_mut(|(_, name, s)| {
        let index = s.member_index as usize;
        match s.index_in(&chosen) {
            Some(now) => {
                s.member_index = now as u32;
                true
            }
            None => {
                log::warn!(
                    "pool_import: '{name}' holds generation {} as member {index}, which the \
                     newest description (generation {generation}) does not list; treated as \
                     not a member",
                    s.generation
                );
                false
            }
        }
    });
    let mut members: Vec<Option<K>> = vec![None; record.members.len()];
    for (key, name, s) in &slots {
        let index = s.member_index as usize;
        if members[index].is_some() {
            return Err(invalid(
                "base_bdevs",
                format!("two bdevs claim to be member {index}; '{name}' is one"),
            ));
        }
        members[index] = Some(*key);
        record.members[index].bdev_name = name.clone();
    }
    if let Some(why) = divided(&record, generation, &slots) {
        if !force {
            return Err(invalid("base_bdevs", why));
        }
        log::warn!("pool_import (force): {why}");
    }
    for (m, key) in record.members.iter_mut().zip(&members) {
        m.absent_since = match key {
            Some(_) => None,
            None => m.absent_since.or(Some(generation)),
        };
    }
    Ok(Choice::Bring {
        record,
        generation,
        members,
    })
}

/// Whether the pool was divided: brought up twice, each time with members the other time
/// had missing, and changed on both sides. `chosen` (the newest description, at
/// `generation`) marks a member absent since generation `g`; if that member holds a newer
/// generation, written while members `chosen` was written to were missing, the two histories
/// went apart at `g`, and taking `chosen` would silently lose what the other side saw since
/// (a shard moved there, say, and written). A member that merely holds an unfinished newer
/// write (a crash part-way through a change) has no members marked missing in it. Says which.
fn divided<K>(chosen: &PoolRecord, generation: u64, slots: &[(K, String, Slot)]) -> Option<String> {
    for (_, name, s) in slots {
        let Some(since) = chosen.members[s.member_index as usize].absent_since else {
            continue;
        };
        if s.generation <= since {
            continue;
        }
        let went_on_without: Vec<&str> = (s.record.members.iter())
            .filter(|x| x.absent_since.is_some())
            .filter_map(|x| chosen.members.iter().find(|c| c.is(x)))
            .filter(|c| c.absent_since.is_none())
            .map(|c| c.bdev_name.as_str())
            .collect();
        if went_on_without.is_empty() {
            continue;
        }
        let holders: Vec<&str> = (slots.iter())
            .filter(|(_, _, o)| o.generation == generation)
            .map(|(_, n, _)| n.as_str())
            .collect();
        let quoted = |names: &[&str]| {
            let q: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            q.join(", ")
        };
        let were = if went_on_without.len() == 1 {
            "was"
        } else {
            "were"
        };
        let holds = if holders.len() == 1 { "holds" } else { "hold" };
        return Some(format!(
            "pool '{}' was divided: '{name}' holds generation {}, written while {} {were} \
             missing, and {} {holds} generation {generation}, written while '{name}' was missing \
             (since generation {since}); each part changed the pool without the other. \
             pool_import with force: true keeps generation {generation}, and what '{name}' \
             saw after generation {since} is lost",
            chosen.name,
            s.generation,
            quoted(&went_on_without),
            quoted(&holders),
        ));
    }
    None
}
