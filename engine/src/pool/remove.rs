//! `pool_remove_bdev {pool, bdev}`: empties a member by migrating every shard it holds to the
//! other members (one at a time, each a data migration as `shard_migrate --target-bdev` runs
//! it, under client load), then takes it out of the pool: the placement is rewritten without
//! it on the remaining members, its metadata slots are wiped, and its claim is released.
//! Each move ends only once the reads routed to the member before its flip are back
//! (`copy_driver`), so nothing of ours is in flight to the member when a new user gets it.
//!
//! The call returns once the drain has started; `pool_get_pools` shows the member as
//! `draining` until it is gone, or the reason the drain stopped (a migration abandoned: the
//! member stays, with the shards not yet moved); calling it again starts the drain again. A
//! draining member takes no new shards. It is refused while a copy reads from or writes to
//! the member.

use super::{invalid, PoolError, PoolService};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRemoveBdevParams {
    pub pool: String,
    pub bdev: String,
}

/// Longest wait for one shard's migration.
const SHARD_DEADLINE: Duration = Duration::from_secs(600);

impl PoolService {
    pub fn remove_member(self: &Arc<Self>, p: &PoolRemoveBdevParams) -> Result<Value, PoolError> {
        let shards = {
            let mut pools = self.lock();
            let pool = pools
                .get_mut(&p.pool)
                .ok_or_else(|| PoolError::NotFound(p.pool.clone()))?;
            let m = pool
                .record
                .members
                .iter()
                .position(|m| m.bdev_name == p.bdev)
                .ok_or_else(|| {
                    invalid(
                        "bdev",
                        format!("'{}' is not a member of pool '{}'", p.bdev, p.pool),
                    )
                })? as u32;
            pool.check_changes_allowed()?;
            if pool.degraded() {
                return Err(PoolError::Degraded(format!(
                    "pool '{}' is degraded; bring every member back before removing one",
                    p.pool
                )));
            }
            // Copies register under the pools lock; one writing to the member would go on
            // writing to a bdev the pool no longer owns.
            if self.migrations.running_to(&p.bdev) {
                return Err(PoolError::Busy(format!(
                    "a migration is copying a shard to '{}'; remove it once that is done",
                    p.bdev
                )));
            }
            // A copy from the member is a move the drain would make too: the drain's own
            // move of that shard would be refused and stop it.
            if self.migrations.running_from(&p.bdev) {
                return Err(PoolError::Busy(format!(
                    "a migration is copying a shard from '{}'; remove it once that is done",
                    p.bdev
                )));
            }
            // An extent kept reserved with no copy running is an abandoned copy's, whose write
            // may still land there: the member must not go to another user before a restart.
            if pool.reserved.iter().any(|&(i, _)| i == m) {
                return Err(PoolError::Busy(format!(
                    "a write to '{}' from an abandoned copy may still land; remove it after a \
                     restart",
                    p.bdev
                )));
            }
            // A drain that stopped (its reason shown) may be started again, for this member
            // or another; one still running may not.
            if matches!(pool.draining, Some((_, None))) {
                return Err(PoolError::Busy(format!(
                    "pool '{}' is already draining a member",
                    p.pool
                )));
            }
            let on_member: Vec<(String, usize)> = pool
                .record
                .volumes
                .iter()
                .flat_map(|v| {
                    v.shards
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.member == m)
                        .map(|(i, _)| (v.name.clone(), i))
                        .collect::<Vec<_>>()
                })
                .collect();
            let free = pool.free_extents();
            let elsewhere: usize = free
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 != m)
                .map(|(_, f)| f.len())
                .sum();
            if pool.record.members.len() < 2 || elsewhere < on_member.len() {
                return Err(PoolError::NoSpace(format!(
                    "'{}' holds {} shard(s); the other members of pool '{}' have {elsewhere} free",
                    p.bdev,
                    on_member.len(),
                    p.pool
                )));
            }
            pool.draining = Some((m, None));
            on_member
        };
        log::info!(
            "pool '{}': draining '{}' ({} shard(s) to move)",
            p.pool,
            p.bdev,
            shards.len()
        );
        let me = Arc::clone(self);
        let (pool, bdev) = (p.pool.clone(), p.bdev.clone());
        let count = shards.len();
        std::thread::Builder::new()
            .name("pool-drain".into())
            .spawn(move || me.drain(&pool, &bdev, shards))
            .map_err(|e| PoolError::Io(format!("starting the drain: {e}")))?;
        Ok(json!({"pool": p.pool, "bdev": p.bdev, "shards_to_move": count, "state": "draining"}))
    }

    fn drain(self: &Arc<Self>, pool: &str, bdev: &str, shards: Vec<(String, usize)>) {
        let result = shards
            .iter()
            .try_for_each(|(volume, shard)| self.move_off(pool, bdev, volume, *shard))
            .and_then(|()| self.drop_member(pool, bdev));
        let mut pools = self.lock();
        if let Some(p) = pools.get_mut(pool) {
            match result {
                Ok(()) => p.draining = None,
                Err(e) => {
                    log::error!("pool '{pool}': draining '{bdev}' stopped: {e}");
                    if let Some(d) = p.draining.as_mut() {
                        d.1 = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Moves one shard to the member with the most free extents, and waits for it.
    fn move_off(
        self: &Arc<Self>,
        pool: &str,
        bdev: &str,
        volume: &str,
        shard: usize,
    ) -> Result<(), PoolError> {
        let target = {
            let pools = self.lock();
            let p = pools
                .get(pool)
                .ok_or_else(|| PoolError::NotFound(pool.into()))?;
            let free = p.free_extents();
            p.record
                .members
                .iter()
                .enumerate()
                .filter(|(i, m)| m.bdev_name != bdev && p.members[*i].is_some())
                .max_by_key(|(i, _)| free[*i].len())
                .map(|(_, m)| m.bdev_name.clone())
                .ok_or_else(|| PoolError::NoSpace("no member left to move to".into()))?
        };
        self.start_data_migration(volume, shard, &target)?;
        let deadline = std::time::Instant::now() + SHARD_DEADLINE;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            match self.migration_outcome(volume, shard) {
                Some(Ok(())) => return Ok(()),
                Some(Err(why)) => {
                    return Err(PoolError::Io(format!(
                        "moving shard {shard} of '{volume}' to '{target}' was abandoned: {why}"
                    )))
                }
                _ if std::time::Instant::now() > deadline => {
                    return Err(PoolError::Io(format!(
                        "moving shard {shard} of '{volume}' timed out"
                    )))
                }
                _ => {}
            }
        }
    }

    /// Takes the emptied member out: placement rewritten without it, its slots wiped, its
    /// claim released.
    fn drop_member(&self, pool: &str, bdev: &str) -> Result<(), PoolError> {
        let mut pools = self.lock();
        let p = pools
            .get_mut(pool)
            .ok_or_else(|| PoolError::NotFound(pool.into()))?;
        let m = p
            .record
            .members
            .iter()
            .position(|x| x.bdev_name == bdev)
            .ok_or_else(|| PoolError::NoPool(format!("'{bdev}' left pool '{pool}' already")))?;
        if p.record
            .volumes
            .iter()
            .any(|v| v.shards.iter().any(|s| s.member as usize == m))
        {
            return Err(PoolError::Busy(format!("'{bdev}' still holds shards")));
        }
        let mut record = p.record.clone();
        record.members.remove(m);
        for v in &mut record.volumes {
            for s in &mut v.shards {
                if s.member as usize > m {
                    s.member -= 1;
                }
            }
        }
        let mut members = p.members.clone();
        let gone = members.remove(m);
        // Written to the remaining members only; the removed one is wiped after.
        p.check_changes_allowed()?;
        let generation = p.generation + 1;
        let written = self.write_generation(&record, generation, &members);
        // Past whatever landed, even on failure (see `persist`).
        p.generation = generation;
        if let Err(e) = written {
            if !p.suspend_if_unknown(&e) {
                // The next write goes to this one's slot, not over the slot of the last
                // whole generation: a member this write failed on keeps that one readable
                // even if the next write to it is torn (found by the simulator: the member
                // came back with no valid slot).
                p.generation = generation + 1;
            }
            return Err(e);
        }
        p.record = record;
        p.members = members;
        for r in p.reserved.iter_mut().chain(p.old_sources.iter_mut()) {
            if r.0 as usize > m {
                r.0 -= 1;
            }
        }
        let bs = p.record.block_size;
        let user = p.claim_name();
        // The member is out of the pool either way: an import ignores slots that name it at
        // an index the newest description gives to another bdev.
        if let Err(e) = self.wipe(&[gone], bs, &[0, 1]) {
            log::warn!(
                "pool '{pool}': '{bdev}' removed, but its metadata could not be wiped ({e}); \
                 formatting it again needs force"
            );
        }
        self.registry.release(bdev, &user);
        log::info!("pool '{pool}': '{bdev}' removed; it is free");
        Ok(())
    }
}
