//! SPDK-style JSON configuration: `{"subsystems":[{"subsystem":"bdev","config":[{"method":
//! "bdev_null_create","params":{...}}]}]}`, the format `tidepool-perf -c` and
//! `tidepoold --json` read and `save_config` writes.
//!
//! The `bdev` subsystem's entries run in order through [`create_bdevs`], the same function
//! the RPC methods use. The `pool`, `balancer`, `nbd` and `nvmf` subsystems need the running engine:
//! [`deferred_entries`] hands their entries to the caller, which runs them once the reactors
//! are up. Other subsystems are accepted only when their config is empty (an SPDK config
//! lists many; tidepool has nothing to set in them). Loading is all or nothing: on the
//! first error, every bdev the load created is removed again, and the error names the entry.

use crate::bdev::delay::{DelayBdev, DelayCreateParams};
use crate::bdev::error::{ErrorBdev, ErrorCreateParams};
use crate::bdev::malloc::{free_default_name, MallocBdev, MallocCreateParams};
use crate::bdev::null::{NullBdev, NullCreateParams};
use crate::bdev::nvme::{AttachParams, NvmeBdev};
use crate::bdev::uring::{UringBdev, UringCreateParams};
use crate::bdev::{Bdev, BdevError, BdevId, BdevRef, BdevRegistry};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config '{path}': {reason}")]
    Read { path: String, reason: String },
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config: {0}")]
    Shape(String),
    #[error("config entry {index} ({method}): {reason}")]
    Entry {
        index: usize,
        method: String,
        reason: String,
    },
}

/// Errors of one create call, as the RPC layer reports them.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("unknown method '{0}'")]
    UnknownMethod(String),
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

/// Methods [`create_bdevs`] understands: [`create_bdev`]'s, and attaching an NVMe
/// controller (one bdev per namespace).
pub const BDEV_CREATE_METHODS: [&str; 6] = [
    "bdev_null_create",
    "bdev_malloc_create",
    "bdev_uring_create",
    "bdev_error_create",
    "bdev_delay_create",
    "bdev_nvme_attach_controller",
];

/// Runs one bdev-making method and registers what it made, all or nothing: a single bdev,
/// or every namespace of an NVMe controller.
pub fn create_bdevs(
    registry: &BdevRegistry,
    method: &str,
    value: Value,
) -> Result<Vec<(BdevId, String)>, CreateError> {
    if method != "bdev_nvme_attach_controller" {
        return create_bdev(registry, method, value).map(|made| vec![made]);
    }
    let p: AttachParams = params(value)?;
    p.check()?;
    let address = p.address();
    for l in registry.list() {
        if let Some(n) = l.bdev.downcast_ref::<NvmeBdev>() {
            let c = n.controller();
            if c.name() == p.name || c.address() == address {
                let param = if c.name() == p.name { "name" } else { "traddr" };
                return Err(CreateError::Bdev(BdevError::invalid(
                    param,
                    format!(
                        "controller '{}' at {} is already attached",
                        c.name(),
                        c.address()
                    ),
                )));
            }
        }
    }
    let mut made = Vec::new();
    for bdev in crate::bdev::nvme::attach(&p)? {
        let name = bdev.info().name.clone();
        match registry.register(Arc::new(bdev)) {
            Ok(id) => made.push((id, name)),
            Err(e) => {
                for (_, name) in &made {
                    let _ = registry.unregister(name);
                }
                return Err(e.into());
            }
        }
    }
    Ok(made)
}

/// Deserializes a method's params (null means none); the error names the parameter that is
/// wrong, and how.
pub fn parse_params<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    let value = match value {
        Value::Null => Value::Object(Default::default()),
        Value::Object(o) => Value::Object(o),
        _ => return Err("params must be a JSON object of named parameters".to_string()),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("parameter '{path}': {inner}")
        }
    })
}

fn params<T: DeserializeOwned>(value: Value) -> Result<T, CreateError> {
    parse_params(value).map_err(CreateError::Params)
}

fn base(registry: &BdevRegistry, name: &str) -> Result<BdevRef, CreateError> {
    let (_, bdev) = registry
        .lookup(name)
        .ok_or_else(|| CreateError::Bdev(BdevError::NotFound(name.to_string())))?;
    if crate::volume::VolumeBdev::of(&*bdev).is_some() {
        // A volume has no channel to stack on; say so now rather than fail every I/O later.
        return Err(CreateError::Bdev(BdevError::invalid(
            "base_bdev",
            format!("'{name}' is a tidepool volume; bdevs cannot be stacked on volumes"),
        )));
    }
    Ok(bdev)
}

/// Creates one bdev from a `bdev_*_create` method and its params, and registers it.
pub fn create_bdev(
    registry: &BdevRegistry,
    method: &str,
    value: Value,
) -> Result<(BdevId, String), CreateError> {
    let bdev: BdevRef = match method {
        "bdev_null_create" => Arc::new(NullBdev::create(&params::<NullCreateParams>(value)?)?),
        "bdev_malloc_create" => {
            let mut p: MallocCreateParams = params(value)?;
            if p.name.is_none() {
                p.name = Some(free_default_name(|n| registry.lookup(n).is_some())?);
            }
            Arc::new(MallocBdev::create(&p)?)
        }
        "bdev_uring_create" => {
            let p: UringCreateParams = params(value)?;
            registry.check_path_free(&p.filename)?;
            Arc::new(UringBdev::create(&p)?)
        }
        "bdev_error_create" => {
            let p: ErrorCreateParams = params(value)?;
            let b = base(registry, &p.base_name)?;
            Arc::new(ErrorBdev::create(&p, b)?)
        }
        "bdev_delay_create" => {
            let p: DelayCreateParams = params(value)?;
            let b = base(registry, &p.base_bdev_name)?;
            Arc::new(DelayBdev::create(&p, b)?)
        }
        other => return Err(CreateError::UnknownMethod(other.to_string())),
    };
    let name = bdev.info().name.clone();
    let id = registry.register(bdev)?;
    Ok((id, name))
}

/// Subsystems whose entries need the running engine, in the order they run, with the
/// method prefixes each accepts: [`apply`] leaves them to the caller, which runs them through
/// the RPC methods of the same name once the reactors are up. Pools come first (with the
/// options their copies run by), so that the balancer finds their shards and NBD and NVMe-oF
/// can serve their volumes.
pub const DEFERRED_SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("pool", &["migration_set_options", "pool_", "volume_"]),
    ("balancer", &["balancer_set_options"]),
    ("nbd", &["nbd_"]),
    ("nvmf", &["nvmf_"]),
];

fn is_deferred(name: &str) -> bool {
    DEFERRED_SUBSYSTEMS.iter().any(|(n, _)| *n == name)
}

/// What a config file made, and what it left for after start-up.
#[derive(Debug)]
pub struct Loaded {
    /// Bdevs created, in order.
    pub bdevs: Vec<String>,
    /// `(method, params)` of the deferred subsystems' entries, in order.
    pub deferred: Vec<(String, Value)>,
}

/// Reads and applies a config file.
pub fn load_file(path: &str, registry: &BdevRegistry) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let value: Value = crate::json_strict::from_slice(text.as_bytes())
        .map_err(|e| ConfigError::Json(e.to_string()))?;
    let deferred = deferred_entries(&value)?;
    let bdevs = apply(&value, registry)?;
    Ok(Loaded { bdevs, deferred })
}

/// Refuses keys the format does not have at its three structural levels (the top level,
/// a subsystem, an entry): a typo such as `"confg"` would otherwise drop a whole subsystem
/// without a word. (Unknown keys inside `params` are refused by each method.)
fn check_known_keys(config: &Value) -> Result<(), ConfigError> {
    let known = |v: &Value, keys: &[&str], at: &str| -> Result<(), ConfigError> {
        match v
            .as_object()
            .and_then(|o| o.keys().find(|k| !keys.contains(&k.as_str())))
        {
            Some(k) => Err(ConfigError::Shape(format!(
                "{at}: unknown key \"{k}\" (expected {})",
                keys.iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Ok(()),
        }
    };
    known(config, &["subsystems"], "top level")?;
    for sub in config
        .get("subsystems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = sub.get("subsystem").and_then(Value::as_str).unwrap_or("?");
        known(
            sub,
            &["subsystem", "config"],
            &format!("subsystem '{name}'"),
        )?;
        for (index, entry) in sub
            .get("config")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            known(
                entry,
                &["method", "params"],
                &format!("subsystem '{name}', entry {index}"),
            )?;
        }
    }
    Ok(())
}

/// The entries of the [`DEFERRED_SUBSYSTEMS`], checked for shape only, in their run order.
pub fn deferred_entries(config: &Value) -> Result<Vec<(String, Value)>, ConfigError> {
    check_known_keys(config)?;
    let mut out = Vec::new();
    let subsystems: Vec<&Value> = config
        .get("subsystems")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for (name, prefixes) in DEFERRED_SUBSYSTEMS {
        for sub in &subsystems {
            if sub.get("subsystem").and_then(Value::as_str) != Some(name) {
                continue;
            }
            let list = sub.get("config").and_then(Value::as_array);
            for (index, entry) in list.into_iter().flatten().enumerate() {
                let method = entry.get("method").and_then(Value::as_str);
                let Some(method) = method.filter(|m| prefixes.iter().any(|p| m.starts_with(p)))
                else {
                    return Err(ConfigError::Entry {
                        index,
                        method: method.unwrap_or("").to_string(),
                        reason: format!(
                            "subsystem '{name}' needs \"method\" names starting {}",
                            prefixes.join(" or ")
                        ),
                    });
                };
                let params = entry.get("params").cloned().unwrap_or(Value::Null);
                out.push((method.to_string(), params));
            }
        }
    }
    Ok(out)
}

/// Applies a parsed config, all or nothing.
pub fn apply(config: &Value, registry: &BdevRegistry) -> Result<Vec<String>, ConfigError> {
    check_known_keys(config)?;
    let shape = |m: &str| ConfigError::Shape(m.to_string());
    let subsystems = config
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("top level needs a \"subsystems\" array"))?;
    let mut entries = Vec::new();
    for sub in subsystems {
        let name = sub
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("each subsystem needs a \"subsystem\" name"))?;
        let config = sub.get("config").cloned().unwrap_or(Value::Null);
        let list = match &config {
            Value::Null => continue,
            Value::Array(list) => list,
            _ => {
                return Err(shape(&format!(
                    "subsystem '{name}': \"config\" must be an array"
                )))
            }
        };
        if name != "bdev" {
            if list.is_empty() || is_deferred(name) {
                continue;
            }
            let allowed: Vec<String> = std::iter::once("bdev")
                .chain(DEFERRED_SUBSYSTEMS.iter().map(|(n, _)| *n))
                .map(|n| format!("'{n}'"))
                .collect();
            return Err(shape(&format!(
                "subsystem '{name}' is not supported (only {} may have entries)",
                allowed.join(", ")
            )));
        }
        entries.extend(list.iter().cloned());
    }
    let mut created: Vec<String> = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let method = entry
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let result = if method.is_empty() {
            Err("needs a \"method\" string".to_string())
        } else if !BDEV_CREATE_METHODS.contains(&method.as_str()) {
            Err(format!(
                "unknown method (supported: {})",
                BDEV_CREATE_METHODS.join(", ")
            ))
        } else {
            let params = entry.get("params").cloned().unwrap_or(Value::Null);
            create_bdevs(registry, &method, params).map_err(|e| e.to_string())
        };
        match result {
            Ok(made) => created.extend(made.into_iter().map(|(_, name)| name)),
            Err(reason) => {
                for name in created.iter().rev() {
                    let _ = registry.unregister(name);
                }
                return Err(ConfigError::Entry {
                    index,
                    method,
                    reason,
                });
            }
        }
    }
    Ok(created)
}

/// Every subsystem [`save`] writes, in the order it writes them (their run order), with the
/// subsystems each depends on: what `framework_get_subsystems` reports, so that SPDK's own
/// client saves them in this order (it expands the dependencies of a subsystem it is asked for
/// from the ones listed before it).
pub const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("bdev", &[]),
    ("pool", &["bdev"]),
    ("balancer", &["pool"]),
    ("nbd", &["bdev", "pool"]),
    ("nvmf", &["bdev", "pool"]),
];

/// The config that recreates every bdev in `registry` (bases before the bdevs stacked on
/// them), then the `pool`, `balancer`, `nbd` and `nvmf` entries given.
pub fn save(
    registry: &BdevRegistry,
    pool: Vec<Value>,
    balancer: Vec<Value>,
    nbd: Vec<Value>,
    nvmf: Vec<Value>,
) -> Value {
    let entries: Vec<Value> = registry
        .list()
        .iter()
        .map(|l| l.bdev.config_entry())
        .filter(|entry| !entry.is_null())
        .collect();
    serde_json::json!({"subsystems": [
        {"subsystem": "bdev", "config": entries},
        {"subsystem": "pool", "config": pool},
        {"subsystem": "balancer", "config": balancer},
        {"subsystem": "nbd", "config": nbd},
        {"subsystem": "nvmf", "config": nvmf},
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(entries: Value) -> Value {
        json!({"subsystems": [{"subsystem": "bdev", "config": entries}]})
    }

    #[test]
    fn creates_stacked_bdevs_and_saves_them_back() {
        let reg = BdevRegistry::new();
        let made = apply(
            &cfg(json!([
                {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 256, "block_size": 512}},
                {"method": "bdev_error_create", "params": {"base_name": "M0"}},
                {"method": "bdev_null_create", "params": {"name": "N0", "num_blocks": 10, "block_size": 4096}},
                {"method": "bdev_delay_create", "params": {"base_bdev_name": "N0", "name": "D0",
                    "avg_read_latency": 10, "p99_read_latency": 20, "avg_write_latency": 10, "p99_write_latency": 20}}
            ])),
            &reg,
        )
        .unwrap();
        assert_eq!(made, ["M0", "EE_M0", "N0", "D0"]);
        let saved = save(&reg, Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let reg2 = BdevRegistry::new();
        assert_eq!(apply(&saved, &reg2).unwrap(), made);
        assert_eq!(reg2.lookup("EE_M0").unwrap().1.info().num_blocks, 256);
        assert!(
            reg.unregister("M0").is_err(),
            "a claimed base must not be removable"
        );
    }

    #[test]
    fn save_writes_the_listed_subsystems_in_order_each_after_its_dependencies() {
        let saved = save(
            &BdevRegistry::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let names: Vec<&str> = saved["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subsystem"].as_str().unwrap())
            .collect();
        let listed: Vec<&str> = SUBSYSTEMS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, listed);
        for (i, (name, deps)) in SUBSYSTEMS.iter().enumerate() {
            for dep in *deps {
                assert!(
                    listed[..i].contains(dep),
                    "{name} depends on {dep}, listed later"
                );
            }
        }
    }

    #[test]
    fn a_bad_entry_names_itself_and_rolls_back() {
        let reg = BdevRegistry::new();
        let err = apply(
            &cfg(json!([
                {"method": "bdev_null_create", "params": {"name": "N0", "num_blocks": 10, "block_size": 4096}},
                {"method": "bdev_null_create", "params": {"name": "N1", "num_blocks": 10, "block_size": 1000}}
            ])),
            &reg,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("entry 1") && err.contains("block_size"),
            "{err}"
        );
        assert!(
            reg.list().is_empty(),
            "a failed load must leave nothing behind"
        );

        for (bad, needle) in [
            (json!({}), "subsystems"),
            // Typos in the structure itself are named, not skipped.
            (
                json!({"subsystems": [{"subsystem": "bdev", "confg": []}]}),
                "unknown key \"confg\"",
            ),
            (
                cfg(json!([{"method": "bdev_null_create", "paramz": null}])),
                "unknown key \"paramz\"",
            ),
            (
                json!({"subsystems": [], "bogus": 1}),
                "unknown key \"bogus\"",
            ),
            (cfg(json!([{"method": "bdev_nope"}])), "unknown method"),
            (
                cfg(json!([{"method": "bdev_null_create", "params": {"name": "x"}}])),
                "num_blocks",
            ),
            (
                cfg(
                    json!([{"method": "bdev_null_create", "params": {"name": "x", "num_blocks": 1, "block_size": 512, "bogus": 1}}]),
                ),
                "bogus",
            ),
            (
                cfg(json!([{"method": "bdev_error_create", "params": {"base_name": "missing"}}])),
                "missing",
            ),
            (
                // 2^64 - 1 blocks of 4 KiB: its size in bytes does not fit in 64 bits.
                cfg(
                    json!([{"method": "bdev_null_create", "params": {"name": "x", "num_blocks": u64::MAX, "block_size": 4096}}]),
                ),
                "above 4611686018427387904 bytes",
            ),
            (
                cfg(
                    json!([{"method": "bdev_uring_create", "params": {"name": "u", "filename": "/dev/null", "queue_depth": 8, "submit_batch": 9}}]),
                ),
                "submit_batch",
            ),
            (
                cfg(
                    json!([{"method": "bdev_uring_create", "params": {"name": "u", "filename": "/dev/null", "submit_hold_us": 10001}}]),
                ),
                "submit_hold_us",
            ),
            (
                json!({"subsystems": [{"subsystem": "iscsi", "config": [{"method": "x"}]}]}),
                "iscsi",
            ),
        ] {
            let err = apply(&bad, &reg).unwrap_err().to_string();
            assert!(err.contains(needle), "'{err}' should mention '{needle}'");
        }
    }

    /// The subsystems that need the engine come back in run order (pools and their copy
    /// options, then the balancer, then NBD, then NVMe-oF) whatever order the file lists them in; a method
    /// that does not belong to its subsystem is refused by name.
    #[test]
    fn deferred_entries_run_in_subsystem_order_and_stay_in_their_subsystem() {
        let config = json!({"subsystems": [
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}]},
            {"subsystem": "nbd", "config": [{"method": "nbd_start_disk", "params": {"n": 1}}]},
            {"subsystem": "balancer", "config": [
                {"method": "balancer_set_options", "params": {"enabled": true}}]},
            {"subsystem": "pool", "config": [
                {"method": "migration_set_options", "params": {"chunk_kib": 64}},
                {"method": "pool_create", "params": {"name": "p"}}]},
        ]});
        let methods: Vec<String> = deferred_entries(&config)
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(
            methods,
            [
                "migration_set_options",
                "pool_create",
                "balancer_set_options",
                "nbd_start_disk",
                "nvmf_create_transport"
            ]
        );
        let astray = json!({"subsystems": [{"subsystem": "balancer", "config": [
            {"method": "shard_migrate", "params": {}}]}]});
        let err = deferred_entries(&astray).unwrap_err().to_string();
        assert!(
            err.contains("shard_migrate") && err.contains("balancer_set_options"),
            "{err}"
        );
    }
}
