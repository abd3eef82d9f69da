//! Methods about the engine itself: `rpc_get_methods`, `framework_get_reactors`, `save_config`,
//! and the two SPDK's own client (`spdk-rpc save_config`) builds its file from:
//! `framework_get_subsystems` (the subsystems in run order, with their dependencies) and
//! `framework_get_config` (one subsystem's entries, exactly as `save_config` writes them, so
//! that both ways of saving give the same file).

use super::{Method, NoParams};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn methods() -> Vec<Method> {
    vec![
        Method {
            name: "rpc_get_methods",
            help: "List the methods this server serves",
            handler: rpc_get_methods,
        },
        Method {
            name: "framework_get_reactors",
            help: "Per reactor: core, busy and idle ticks (tick_rate ticks per second)",
            handler: framework_get_reactors,
        },
        Method {
            name: "framework_get_subsystems",
            help: "The config's subsystems in the order they run, each with what it depends on",
            handler: framework_get_subsystems,
        },
        Method {
            name: "framework_get_config",
            help: "One subsystem's config entries, as save_config writes them",
            handler: framework_get_config,
        },
        Method {
            name: "save_config",
            help: "The JSON config that recreates the current state (load it with --json)",
            handler: save_config,
        },
    ]
}

/// SPDK's parameters; tidepool has a single state, so `current` changes nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsParams {
    #[serde(default, rename = "current")]
    _current: bool,
    #[serde(default, rename = "include_aliases")]
    _include_aliases: bool,
}

fn rpc_get_methods(
    _: &Services,
    table: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    parse_params::<GetMethodsParams>(params)?;
    Ok(json!(table.iter().map(|m| m.name).collect::<Vec<_>>()))
}

fn framework_get_reactors(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    parse_params::<NoParams>(params)?;
    let reactors: Vec<Value> = services
        .engine
        .stats()
        .iter()
        .map(|s| {
            json!({"lcore": s.core, "busy": s.busy_ns, "idle": s.idle_ns,
                "polls": s.polls, "parks": s.parks, "wakeups": s.wakeups})
        })
        .collect();
    Ok(json!({"tick_rate": 1_000_000_000u64, "reactors": reactors}))
}

fn save_config(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    parse_params::<NoParams>(params)?;
    Ok(crate::config::save(
        &services.registry,
        services.pools.config_entries(),
        services.balancer.config_entries(),
        services.nbd.config_entries(),
        services.nvmf.config_entries(),
    ))
}

fn framework_get_subsystems(
    _: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    parse_params::<NoParams>(params)?;
    Ok(json!(crate::config::SUBSYSTEMS
        .iter()
        .map(|(name, deps)| json!({"subsystem": name, "depends_on": deps}))
        .collect::<Vec<_>>()))
}

/// SPDK's parameters. `with_batches` asks SPDK to keep entries it groups into batch arrays;
/// tidepool never groups them, so either value gives the same flat list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfigParams {
    name: String,
    #[serde(default, rename = "with_batches")]
    _with_batches: bool,
}

fn framework_get_config(
    services: &Services,
    methods: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: GetConfigParams = parse_params(params)?;
    if !crate::config::SUBSYSTEMS.iter().any(|(n, _)| *n == p.name) {
        return Err(RpcError::invalid_params(format!(
            "parameter 'name': no subsystem '{}' (framework_get_subsystems lists them)",
            p.name
        )));
    }
    let saved = save_config(services, methods, None)?;
    let config = saved["subsystems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["subsystem"] == p.name.as_str())
        .map(|s| s["config"].clone())
        .unwrap_or_else(|| json!([]));
    Ok(config)
}
