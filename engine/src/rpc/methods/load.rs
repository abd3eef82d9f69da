//! Load methods: `load_get_stats`, the state table the reactors' load monitors publish (see
//! `crate::load`), merged and named for people and scripts.

use super::Method;
use crate::load::{Load, Snapshot};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub fn methods() -> Vec<Method> {
    vec![Method {
        name: "load_get_stats",
        help: "Load over the last sampling window: per reactor, per bdev, and the hottest shards (top, default 10)",
        handler: load_get_stats,
    }]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetStatsParams {
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    10
}

fn with_load(mut obj: Map<String, Value>, load: &Load) -> Value {
    load.json_into(&mut obj);
    Value::Object(obj)
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn load_get_stats(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: GetStatsParams = parse_params(params)?;
    let table = services.engine.state_table();
    let snap: Snapshot = table.snapshot();
    let cores = services.engine.cores();
    let core_of = |r: usize| cores.get(r).copied().unwrap_or(r);
    let registry = &services.registry;
    let name_of = |id| registry.get(id).map(|b| b.info().name.clone());

    let reactors: Vec<Value> = snap
        .reactors
        .iter()
        .map(|r| {
            let round = |x: f64| (x * 1000.0).round() / 1000.0;
            let head = json!({"reactor": r.reactor, "lcore": core_of(r.reactor as usize),
                "busy_ratio": round(r.busy_ratio), "share": round(r.share),
                "requests_taken_per_s": r.taken_per_s.round(),
                "net_bytes_per_s": r.net_bytes_per_s.round()});
            with_load(fields(head), &r.load)
        })
        .collect();
    let bdevs: Vec<Value> = snap
        .bdevs
        .iter()
        .filter_map(|(id, load)| {
            let name = name_of(*id)?;
            Some(with_load(fields(json!({ "name": name })), load))
        })
        .collect();
    let shards: Vec<Value> = snap
        .shards
        .iter()
        .filter_map(|(key, load)| {
            let bdev = registry.get(key.volume)?;
            let volume = crate::volume::VolumeBdev::of(&*bdev)?;
            let table = volume.table();
            let route = table.shards.get(key.shard as usize)?;
            let head = json!({"volume": volume.name(), "shard": key.shard,
                "bdev": route.member_name, "owner_core": core_of(route.owner as usize)});
            Some(with_load(fields(head), load))
        })
        .take(p.top)
        .collect();
    Ok(json!({
        "interval_ms": table.interval_ns() / 1_000_000,
        "reactors": reactors,
        "bdevs": bdevs,
        "shards": shards,
    }))
}
