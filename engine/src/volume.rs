//! Volumes and their routing table.
//!
//! A [`Volume`] is a virtual block device cut into equal shards of `shard_blocks` blocks
//! (the last one may be shorter). Each shard lives at one extent of one pool member and is
//! served by one reactor, its owner: that is its [`ShardRoute`]. The routes of a volume form
//! a [`RouteTable`], versioned by an epoch.
//!
//! Reading the table on the I/O path takes no lock: each reactor keeps its own `Arc` of the
//! table and compares its epoch with [`Volume::epoch`] (one atomic load per request). Only
//! when the epoch moved does the reactor take the table's mutex, once, to pick up the new
//! `Arc`. Writers (the control path, migrations) build a whole new table, swap it in under
//! the mutex and then advance the epoch, so a reactor that sees the new epoch finds the new
//! table (or a newer one).
//!
//! The reactors' side of volume I/O (splitting at shard boundaries, sending each piece to its
//! owner, forwarding a piece that reaches a reactor that no longer owns its shard) is in
//! `reactor::router`. Volumes are made and persisted by `pool`.

use crate::bdev::{Bdev, BdevChannel, BdevError, BdevId, BdevInfo};
use crate::reactor::ReactorId;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// `bdev_get_bdevs` shows volumes under this product name.
pub const PRODUCT_NAME: &str = "tidepool volume";

/// Whether a shard can take I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    Online,
    /// Its member is missing (a degraded pool): I/O to it fails with ENODEV.
    Unavailable,
}

/// Where one shard lives and who serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRoute {
    /// The reactor that executes the shard's I/O.
    pub owner: ReactorId,
    /// The member bdev's registry id (meaningless while the shard is unavailable).
    pub member: BdevId,
    /// The member's name, for people.
    pub member_name: String,
    /// Where the shard starts on the member.
    pub offset_blocks: u64,
    pub state: ShardState,
}

/// Every shard's route at one epoch.
#[derive(Clone, Debug)]
pub struct RouteTable {
    pub epoch: u64,
    pub shards: Vec<ShardRoute>,
    /// Members a shard may have moved to without the table saying so: the write of its new
    /// placement timed out, and may still land (`reactor::copy`, "undecided"). Its writes are
    /// mirrored there until the pool is imported again, so a flush must reach them too.
    pub undecided_targets: Vec<BdevId>,
}

/// A volume's identity, geometry and routing table; shared by its bdev and every reactor.
pub struct Volume {
    info: BdevInfo,
    pool: String,
    shard_blocks: u64,
    /// The epoch of the newest table in `table`; advanced after the table is swapped.
    epoch: AtomicU64,
    table: Mutex<Arc<RouteTable>>,
}

impl Volume {
    /// A volume with `info`'s name, uuid and geometry (its product name is set here), in
    /// shards of `shard_blocks`, with one route per shard.
    pub fn new(
        mut info: BdevInfo,
        pool: &str,
        shard_blocks: u64,
        shards: Vec<ShardRoute>,
    ) -> Volume {
        assert!(shard_blocks > 0 && info.num_blocks > 0);
        assert_eq!(shards.len() as u64, info.num_blocks.div_ceil(shard_blocks));
        info.product_name = PRODUCT_NAME;
        Volume {
            info,
            pool: pool.to_string(),
            shard_blocks,
            epoch: AtomicU64::new(1),
            table: Mutex::new(Arc::new(RouteTable {
                epoch: 1,
                shards,
                undecided_targets: Vec::new(),
            })),
        }
    }

    pub fn info(&self) -> &BdevInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn shard_blocks(&self) -> u64 {
        self.shard_blocks
    }

    pub fn shard_count(&self) -> usize {
        self.info.num_blocks.div_ceil(self.shard_blocks) as usize
    }

    /// The shard holding volume block `offset_blocks`.
    #[inline]
    pub fn shard_of(&self, offset_blocks: u64) -> usize {
        (offset_blocks / self.shard_blocks) as usize
    }

    /// The current epoch (Acquire: a reader that sees it also sees its table).
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The current table (takes the mutex: call it when the epoch moved, not per request).
    pub fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publishes a changed table: `change` edits a copy of the routes, which becomes the
    /// table of the next epoch. Returns that epoch.
    pub fn update(&self, change: impl FnOnce(&mut Vec<ShardRoute>)) -> u64 {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut shards = guard.shards.clone();
        change(&mut shards);
        assert_eq!(
            shards.len(),
            self.shard_count(),
            "a table has one route per shard"
        );
        let epoch = guard.epoch + 1;
        let undecided_targets = guard.undecided_targets.clone();
        *guard = Arc::new(RouteTable {
            epoch,
            shards,
            undecided_targets,
        });
        // Release, under the mutex: a reactor that loads this epoch finds this table.
        self.epoch.store(epoch, Ordering::Release);
        epoch
    }

    /// Member `target` may hold a shard from now on (its placement's write timed out, see
    /// [`RouteTable::undecided_targets`]): every flush of the volume reaches it, until the
    /// volume is made again by an import. Returns the new epoch.
    pub fn add_undecided_target(&self, target: BdevId) -> u64 {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = RouteTable::clone(&guard);
        table.epoch += 1;
        if !table.undecided_targets.contains(&target) {
            table.undecided_targets.push(target);
        }
        let epoch = table.epoch;
        *guard = Arc::new(table);
        // Release, under the mutex, as in `update`.
        self.epoch.store(epoch, Ordering::Release);
        epoch
    }

    /// Hands shard `shard` to reactor `owner`. Requests already on their way to the old
    /// owner are forwarded by it.
    pub fn set_owner(&self, shard: usize, owner: ReactorId) -> u64 {
        self.update(|shards| shards[shard].owner = owner)
    }

    /// `volume_get_volumes`' shard list: the routing table as the user sees it (`cores`:
    /// the core of each reactor, by reactor index).
    pub fn shards_json(&self, cores: &[usize]) -> Value {
        let table = self.table();
        let rows: Vec<Value> = table
            .shards
            .iter()
            .enumerate()
            .map(|(index, r)| {
                json!({"index": index, "bdev": r.member_name, "offset_blocks": r.offset_blocks,
                       "owner_core": cores.get(r.owner as usize).copied().unwrap_or(r.owner as usize),
                       "state": r.state})
            })
            .collect();
        Value::Array(rows)
    }
}

/// The bdev face of a volume, so that NBD, perf and the RPC methods take it like any bdev.
pub struct VolumeBdev {
    volume: Arc<Volume>,
}

impl VolumeBdev {
    pub fn new(volume: Arc<Volume>) -> VolumeBdev {
        VolumeBdev { volume }
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The volume behind a bdev, when it is a tidepool volume (its I/O is routed by the
    /// reactors, not sent to a channel).
    pub fn of(bdev: &(dyn Bdev + 'static)) -> Option<Arc<Volume>> {
        bdev.downcast_ref::<VolumeBdev>()
            .map(|v| Arc::clone(&v.volume))
    }
}

impl Bdev for VolumeBdev {
    fn info(&self) -> &BdevInfo {
        self.volume.info()
    }

    /// A volume has no queue pair of its own: the reactors route its I/O to its members'
    /// channels (`reactor::router`), so nothing may stack a channel on it.
    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Err(BdevError::invalid(
            "base_bdev",
            format!(
                "'{}' is a tidepool volume; bdevs cannot be stacked on volumes",
                self.volume.name()
            ),
        ))
    }

    fn driver_specific(&self) -> Value {
        let v = &self.volume;
        json!({"volume": {"pool": v.pool(), "shard_count": v.shard_count(),
            "shard_blocks": v.shard_blocks(), "epoch": v.epoch()}})
    }

    /// Volumes are brought back by `pool_import`, not by a bdev entry.
    fn config_entry(&self) -> Value {
        Value::Null
    }
}
