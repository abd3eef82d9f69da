//! Moving shards: `shard_migrate`. With `target_bdev`, the shard's data moves to another
//! member (see `copy_driver`). With `target_core` only, the shard is handed to another
//! reactor and no data moves: the new owner is persisted on every member first, then the
//! routing table's epoch advances; requests already on their way to the old owner are
//! forwarded by it (see `reactor::router`), and I/O it already started completes there, so
//! nothing is failed or lost. A crash between the two steps leaves the new owner on the
//! devices, which only decides who serves the shard after the restart.

use super::{invalid, pool_of, PoolError, PoolService};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// `shard_migrate` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMigrateParams {
    pub volume: String,
    pub shard: u32,
    /// The core whose reactor is to serve the shard.
    #[serde(default)]
    pub target_core: Option<usize>,
    /// A member bdev of the pool to copy the shard to.
    #[serde(default)]
    pub target_bdev: Option<String>,
}

impl PoolService {
    /// Moves a shard: its data to `target_bdev`, or its service to `target_core`.
    pub fn migrate_shard(self: &Arc<Self>, p: &ShardMigrateParams) -> Result<Value, PoolError> {
        if let Some(bdev) = &p.target_bdev {
            if p.target_core.is_some() {
                return Err(invalid(
                    "target_core",
                    "give target_bdev or target_core, not both (move the data, then the service)",
                ));
            }
            let shards = self
                .volume(&p.volume)
                .ok_or_else(|| PoolError::VolumeNotFound(p.volume.clone()))?
                .shard_count();
            if p.shard as usize >= shards {
                return Err(invalid(
                    "shard",
                    format!("volume '{}' has shards 0 to {}", p.volume, shards - 1),
                ));
            }
            return self.start_data_migration(&p.volume, p.shard as usize, bdev);
        }
        let core = p
            .target_core
            .ok_or_else(|| invalid("target_core", "give the core that is to serve the shard"))?;
        let cores = self.engine.cores();
        let target = cores.iter().position(|&c| c == core).ok_or_else(|| {
            invalid(
                "target_core",
                format!("core {core} runs no reactor (reactors run on cores {cores:?})"),
            )
        })? as u16;
        let mut pools = self.lock();
        // Checked under the pools lock, under which copies are registered: only a copy's
        // owner mirrors the shard's writes to the target, so the owner must not change
        // while one runs.
        if self.migrations.running_for(&p.volume, p.shard) {
            return Err(PoolError::Busy(format!(
                "shard {} of volume '{}' is migrating to another bdev; hand it off afterwards",
                p.shard, p.volume
            )));
        }
        let pool = pool_of(&mut pools, &p.volume)?;
        let volume = Arc::clone(&pool.volumes[&p.volume].1);
        let vi = pool.record_index(&p.volume);
        let shards = pool.record.volumes[vi].shards.len();
        let shard = p.shard as usize;
        if shard >= shards {
            return Err(invalid(
                "shard",
                format!("volume '{}' has shards 0 to {}", p.volume, shards - 1),
            ));
        }
        let placed = pool.record.volumes[vi].shards[shard];
        if pool.members[placed.member as usize].is_none() {
            let member = &pool.record.members[placed.member as usize].bdev_name;
            return Err(PoolError::Degraded(format!(
                "shard {shard} of volume '{}' is on missing member '{member}'",
                p.volume
            )));
        }
        let from = volume.table().shards[shard].owner;
        let from_core = cores.get(from as usize).copied().unwrap_or(from as usize);
        if from == target {
            return Err(invalid(
                "target_core",
                format!(
                    "shard {shard} of volume '{}' is already served by core {core}",
                    p.volume
                ),
            ));
        }
        let mut record = pool.record.clone();
        record.volumes[vi].shards[shard].owner = target;
        self.persist(pool, record)?;
        let epoch = volume.set_owner(shard, target);
        log::info!(
            "volume '{}': shard {shard} handed from core {from_core} to core {core} (epoch {epoch})",
            p.volume
        );
        Ok(
            json!({"volume": p.volume, "shard": shard, "from_core": from_core,
                  "to_core": core, "epoch": epoch}),
        )
    }
}
