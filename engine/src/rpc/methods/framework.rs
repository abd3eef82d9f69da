//! Methods about the engine itself: `rpc_get_methods`, `framework_get_reactors`, `save_config`.

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
    ))
}
