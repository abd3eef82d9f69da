//! Pool and volume methods: `pool_create`, `pool_import`, `pool_delete`, `pool_get_pools`,
//! `volume_create`, `volume_delete`, `volume_get_volumes`. SPDK's closest concepts are the
//! lvol store and lvols (`bdev_lvol_create_lvstore`, `bdev_lvol_create`); tidepool's pools
//! span several bdevs and its volumes are sharded, so the names are its own, in SPDK's shape.

use super::{Method, NameParam};
use crate::pool::{
    MigrationOptions, PoolCreateParams, PoolError, PoolRemoveBdevParams, ShardMigrateParams,
    VolumeCreateParams,
};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn methods() -> Vec<Method> {
    vec![
        Method {
            name: "pool_create",
            help: "Format base_bdevs into a pool (shard_size_mib default 64, or shard_size_kib; force)",
            handler: pool_create,
        },
        Method {
            name: "pool_import",
            help: "Bring up the pool whose metadata is on base_bdevs (what save_config writes)",
            handler: pool_import,
        },
        Method {
            name: "pool_delete",
            help: "Remove a pool that holds no volume and wipe its metadata",
            handler: pool_delete,
        },
        Method {
            name: "pool_get_pools",
            help: "Pools with their state and members (uuid, capacity, used space, shard count)",
            handler: pool_get_pools,
        },
        Method {
            name: "volume_create",
            help: "Create volume name of size_mib in pool, its shards spread over members and reactors",
            handler: volume_create,
        },
        Method {
            name: "volume_delete",
            help: "Delete a volume that is not in use (not exported)",
            handler: volume_delete,
        },
        Method {
            name: "shard_migrate",
            help: "Move shard of volume: its data to target_bdev (copied while clients write), or its service to target_core",
            handler: shard_migrate,
        },
        Method {
            name: "pool_remove_bdev",
            help: "Empty member bdev of pool by migrating its shards to the others, then release it",
            handler: pool_remove_bdev,
        },
        Method {
            name: "migration_get_status",
            help: "Data migrations, running then recent: state, bytes copied, total, restarts, last error, rate",
            handler: migration_get_status,
        },
        Method {
            name: "migration_set_options",
            help: "How shard copies run: chunk_kib, max_inflight, max_mib_per_s (0: no cap), max_restarts",
            handler: migration_set_options,
        },
        Method {
            name: "volume_get_volumes",
            help: "Volumes with their shards: member bdev, offset, owner core, state",
            handler: volume_get_volumes,
        },
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportParams {
    base_bdevs: Vec<String>,
    /// Import a divided pool from its newest description (see `PoolService::import`).
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalName {
    name: Option<String>,
}

fn pool_create(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: PoolCreateParams = parse_params(params)?;
    s.pools.create(&p)?;
    Ok(json!(p.name))
}

fn pool_import(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: ImportParams = parse_params(params)?;
    Ok(json!(s.pools.import(&p.base_bdevs, p.force)?))
}

/// `pool_delete` params: `force` deletes a degraded pool (see `PoolService::delete`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolDeleteParams {
    name: String,
    #[serde(default)]
    force: bool,
}

fn pool_delete(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: PoolDeleteParams = parse_params(params)?;
    s.pools.delete(&p.name, p.force)?;
    Ok(json!(true))
}

fn pool_get_pools(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: OptionalName = parse_params(params)?;
    Ok(s.pools.pools_json(p.name.as_deref())?)
}

fn volume_create(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: VolumeCreateParams = parse_params(params)?;
    s.pools.create_volume(&p)?;
    Ok(json!(p.name))
}

fn volume_delete(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: NameParam = parse_params(params)?;
    s.pools.delete_volume(&p.name)?;
    Ok(json!(true))
}

fn volume_get_volumes(
    s: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: OptionalName = parse_params(params)?;
    Ok(s.pools.volumes_json(p.name.as_deref())?)
}

fn shard_migrate(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: ShardMigrateParams = parse_params(params)?;
    Ok(services.pools.migrate_shard(&p)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationStatusParams {
    #[serde(default)]
    volume: Option<String>,
}

fn migration_get_status(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: MigrationStatusParams = parse_params(params)?;
    let rows = services.pools.migrations_json(p.volume.as_deref());
    // An unknown volume is an error, as in the other get methods; a deleted one's copies
    // are still listed while they are kept.
    if let Some(name) = &p.volume {
        let listed = rows.as_array().is_some_and(|r| !r.is_empty());
        if !listed && services.pools.volume(name).is_none() {
            return Err(PoolError::VolumeNotFound(name.clone()).into());
        }
    }
    Ok(rows)
}

/// Every field optional: what is not given keeps its value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationSetParams {
    chunk_kib: Option<u32>,
    max_inflight: Option<u32>,
    max_mib_per_s: Option<u64>,
    max_restarts: Option<u32>,
}

fn migration_set_options(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: MigrationSetParams = parse_params(params)?;
    let o = services.pools.migration_options();
    let o = MigrationOptions {
        chunk_kib: p.chunk_kib.unwrap_or(o.chunk_kib),
        max_inflight: p.max_inflight.unwrap_or(o.max_inflight),
        max_mib_per_s: p.max_mib_per_s.unwrap_or(o.max_mib_per_s),
        max_restarts: p.max_restarts.unwrap_or(o.max_restarts),
    };
    services.pools.set_migration_options(o)?;
    Ok(json!(true))
}

fn pool_remove_bdev(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: PoolRemoveBdevParams = parse_params(params)?;
    Ok(services.pools.remove_member(&p)?)
}
