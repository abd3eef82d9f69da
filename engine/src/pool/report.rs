//! What the pool service shows: the `pool_get_pools` and `volume_get_volumes` listings, the
//! `save_config` entries that bring the pools back at the next start, and the views other
//! parts read: members and movable volumes for the balancer, one volume by name for the
//! migration RPCs, every volume for tidepool-perf's timeline. Nothing here changes a pool.

use super::{MemberState, Pool, PoolError, PoolService};
use crate::bdev::{BdevId, BdevRef, BdevRegistry};
use crate::volume::Volume;
use serde_json::{json, Value};
use std::sync::Arc;

impl PoolService {
    /// `pool_get_pools`: each pool with its state and members.
    pub fn pools_json(&self, name: Option<&str>) -> Result<Value, PoolError> {
        // Members a copy to which was given up: the balancer sends it no more copies.
        let flagged = self.flagged_members();
        let pools = self.lock();
        if let Some(n) = name {
            if !pools.contains_key(n) {
                return Err(PoolError::NotFound(n.to_string()));
            }
        }
        let rows = pools
            .values()
            .filter(|p| name.is_none_or(|n| n == p.record.name))
            .map(|p| {
                let r = &p.record;
                let bs = r.block_size as u64;
                let free = p.free_extents();
                let taken = p.taken();
                let members: Vec<Value> = r
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let used = m.extents - free[i].len() as u64;
                        // Extents held for copies to this member, or old sources whose
                        // reads are still in flight: taken, but not shards of any volume
                        // (`volume_get_volumes` does not list them). A committed copy's
                        // extent is a shard before its reservation goes.
                        let reserved = taken
                            .iter()
                            .filter(|&&(at, extent)| {
                                at as usize == i && !r.places_shard_at(at, extent)
                            })
                            .count() as u64;
                        let state = match (p.members[i].is_some(), &p.draining) {
                            (false, _) => "missing",
                            (true, Some((d, _))) if *d as usize == i => "draining",
                            _ => "online",
                        };
                        // The member's identity, which outlives device names (none in pools
                        // made before members had one).
                        let uuid = (!m.uuid.is_empty()).then_some(&m.uuid);
                        json!({"name": m.bdev_name, "uuid": uuid, "index": i, "state": state,
                            "capacity_mib": (m.extents * r.shard_blocks * bs) >> 20,
                            "used_mib": (used * r.shard_blocks * bs) >> 20,
                            "shard_count": used - reserved, "reserved_shards": reserved,
                            "takes_copies": !flagged.contains(&m.bdev_name),
                            "free_shards": free[i].len()})
                    })
                    .collect();
                json!({"name": r.name, "uuid": r.uuid,
                    "state": if p.suspended.is_some() {
                        "suspended"
                    } else if p.degraded() {
                        "degraded"
                    } else {
                        "online"
                    },
                    "block_size": r.block_size, "shard_size_kib": (r.shard_blocks * bs) >> 10,
                    "generation": p.generation, "volumes": p.volumes.keys().collect::<Vec<_>>(),
                    "members": members,
                    "drain_error": p.draining.as_ref().and_then(|d| d.1.clone()),
                    "suspended": p.suspended})
            })
            .collect();
        Ok(Value::Array(rows))
    }

    /// `volume_get_volumes`: each volume with its routing table.
    pub fn volumes_json(&self, name: Option<&str>) -> Result<Value, PoolError> {
        let cores = self.engine.cores();
        let pools = self.lock();
        let mut rows = Vec::new();
        for p in pools.values() {
            for (vname, (_, v)) in &p.volumes {
                if name.is_some_and(|n| n != vname) {
                    continue;
                }
                let info = v.info();
                rows.push(
                    json!({"name": vname, "uuid": info.uuid, "pool": p.record.name,
                    "block_size": info.block_size, "num_blocks": info.num_blocks,
                    "size_mib": (info.num_blocks * info.block_size as u64) >> 20,
                    "shard_blocks": v.shard_blocks(), "epoch": v.epoch(),
                    "shards": v.shards_json(&cores)}),
                );
            }
        }
        if let (Some(n), true) = (name, rows.is_empty()) {
            return Err(PoolError::VolumeNotFound(n.to_string()));
        }
        Ok(Value::Array(rows))
    }

    /// Every member of every present pool, as the balancer weighs it.
    pub fn members(&self) -> Vec<MemberState> {
        let flagged = self.flagged_members();
        let pools = self.lock();
        let mut out = Vec::new();
        for p in pools.values() {
            let free = p.free_extents();
            let open = p.open_members();
            for (i, m) in p.record.members.iter().enumerate() {
                let Some(bdev) = p.members[i] else { continue };
                out.push(MemberState {
                    pool: p.record.name.clone(),
                    bdev,
                    name: m.bdev_name.clone(),
                    free_extents: free[i].len() as u64,
                    open: open[i] && !flagged.contains(&m.bdev_name) && p.suspended.is_none(),
                });
            }
        }
        out
    }

    /// Every volume with its registry id and name.
    pub fn volumes(&self) -> Vec<(BdevId, String, Arc<Volume>)> {
        self.volumes_where(|_| true)
    }

    /// The volumes whose shards may be moved: those of pools that take changes (a suspended
    /// pool refuses the placement a move would persist, so the balancer leaves it alone).
    pub fn movable_volumes(&self) -> Vec<(BdevId, String, Arc<Volume>)> {
        self.volumes_where(|p| p.suspended.is_none())
    }

    fn volumes_where(&self, keep: impl Fn(&Pool) -> bool) -> Vec<(BdevId, String, Arc<Volume>)> {
        let pools = self.lock();
        pools
            .values()
            .filter(|p| keep(p))
            .flat_map(|p| p.volumes.iter())
            .map(|(name, (id, v))| (*id, name.clone(), Arc::clone(v)))
            .collect()
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        let pools = self.lock();
        pools
            .values()
            .find_map(|p| p.volumes.get(name).map(|(_, v)| Arc::clone(v)))
    }

    /// `save_config` entries: `migration_set_options` with the copies' options, then one
    /// `pool_import` per pool, naming every member. A pool whose members all live in RAM
    /// (malloc, null, or error and delay bdevs on them) has nothing to import after a restart: it is saved as the `pool_create`
    /// and `volume_create`s that make the same layout again, empty (an import would fail and
    /// stop the daemon's start-up).
    pub fn config_entries(&self) -> Vec<Value> {
        let volatile = |id: &Option<BdevId>| {
            id.and_then(|id| self.registry.get(id))
                .is_some_and(|b| lives_in_ram(&self.registry, &b))
        };
        // The copies' options first, as SPDK puts a subsystem's `*_set_options` first.
        let mut entries = vec![json!({"method": "migration_set_options",
                                      "params": self.migration_options()})];
        let listed = self.registry.list();
        for p in self.lock().values().filter(|p| !p.creation_unknown) {
            let user = format!("pool '{}'", p.record.name);
            // Each name once, and a missing member's only while no one else holds a bdev of
            // that name: a missing member keeps the name it last had, which a present member,
            // or another pool's member, may have taken since (device names shift when a disk
            // goes missing; a replaced disk is free to be used). Listed, that bdev would make
            // the import at the next start fail as another pool's.
            let taken_by_another = |name: &str| {
                listed.iter().any(|l| {
                    l.bdev.info().name == name && l.claimed_by.as_ref().is_some_and(|c| *c != user)
                })
            };
            let mut names: Vec<&str> = Vec::new();
            for (m, id) in p.record.members.iter().zip(&p.members) {
                let name = m.bdev_name.as_str();
                if names.contains(&name) || (id.is_none() && taken_by_another(name)) {
                    continue;
                }
                names.push(name);
            }
            if !p.members.iter().all(volatile) {
                entries.push(json!({"method": "pool_import", "params": {"base_bdevs": names}}));
                continue;
            }
            let bs = p.record.block_size as u64;
            entries.push(json!({"method": "pool_create", "params": {
                "name": p.record.name, "base_bdevs": names,
                "shard_size_kib": p.record.shard_blocks * bs / 1024}}));
            for v in &p.record.volumes {
                entries.push(json!({"method": "volume_create", "params": {
                    "pool": p.record.name, "name": v.name,
                    "size_mib": (v.num_blocks * bs) >> 20}}));
            }
        }
        entries
    }
}

/// Whether `bdev`'s blocks live in RAM only, gone at a restart: a malloc or null bdev, or one
/// stacked (error, delay) on such bdevs only.
fn lives_in_ram(registry: &BdevRegistry, bdev: &BdevRef) -> bool {
    let product = bdev.info().product_name;
    if product == crate::bdev::malloc::PRODUCT_NAME || product == crate::bdev::null::PRODUCT_NAME {
        return true;
    }
    let bases = bdev.base_bdevs();
    !bases.is_empty()
        && bases.iter().all(|name| {
            registry
                .lookup(name)
                .is_some_and(|(_, base)| lives_in_ram(registry, &base))
        })
}
