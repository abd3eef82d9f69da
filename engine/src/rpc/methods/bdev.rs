//! Bdev methods: the generic ones (`bdev_get_bdevs`, `bdev_get_iostat`) and each backend's
//! create, delete and control methods, with SPDK's names and parameters.
//!
//! Creating goes through [`crate::config::create_bdev`], the function `--json` configs use, so
//! a method and a config entry can never disagree. Deleting is careful about reactors: the bdev
//! leaves the registry first (so no reactor can open a new channel on it; a claimed bdev is
//! refused there and nothing changes), then every reactor closes its channel, and the call
//! returns when the last channel is gone. A channel still holding I/O is closed when that I/O
//! comes back; an error bdev's held (`pending`) I/O is released to its base first.

use super::{Method, NameParam};
use crate::bdev::delay::LatencyType;
use crate::bdev::error::{ErrorKind, InjectParams, InjectTarget};
use crate::bdev::iostat::IoStat;
use crate::bdev::{delay, error, malloc, null, uring, BdevError, BdevId, BdevRef, IoType};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// How long a call waits for a reactor to run a control closure.
const REACTOR_DEADLINE: Duration = Duration::from_secs(5);
/// How long a delete waits for channels still holding I/O to hand it back.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest `timeout` of `bdev_get_bdevs`, in ms.
const MAX_WAIT_MS: u64 = 60_000;

macro_rules! create_method {
    ($fn_name:ident, $method:literal) => {
        fn $fn_name(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
            let params = params.unwrap_or(Value::Null);
            let (_, name) = crate::config::create_bdev(&s.registry, $method, params)?;
            log::info!("{}: created bdev '{name}'", $method);
            Ok(json!(name))
        }
    };
}

macro_rules! delete_method {
    ($fn_name:ident, $method:literal, $product:expr, $kind:literal) => {
        fn $fn_name(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
            let p: NameParam = parse_params(params)?;
            delete_bdev(s, &p.name, $product, $kind)?;
            log::info!("{}: deleted bdev '{}'", $method, p.name);
            Ok(json!(true))
        }
    };
}

create_method!(malloc_create, "bdev_malloc_create");
create_method!(null_create, "bdev_null_create");
create_method!(uring_create, "bdev_uring_create");
create_method!(error_create, "bdev_error_create");
create_method!(delay_create, "bdev_delay_create");
delete_method!(
    malloc_delete,
    "bdev_malloc_delete",
    malloc::PRODUCT_NAME,
    "malloc"
);
delete_method!(null_delete, "bdev_null_delete", null::PRODUCT_NAME, "null");
delete_method!(
    uring_delete,
    "bdev_uring_delete",
    uring::PRODUCT_NAME,
    "uring"
);
delete_method!(
    error_delete,
    "bdev_error_delete",
    error::PRODUCT_NAME,
    "error"
);
delete_method!(
    delay_delete,
    "bdev_delay_delete",
    delay::PRODUCT_NAME,
    "delay"
);

pub fn methods() -> Vec<Method> {
    let m = |name, help, handler| Method {
        name,
        help,
        handler,
    };
    vec![
        m("bdev_get_bdevs", "List bdevs, or one by name", get_bdevs),
        m(
            "bdev_get_iostat",
            "I/O statistics of every bdev, or of one by name",
            get_iostat,
        ),
        m(
            "bdev_malloc_create",
            "Create a RAM bdev {name?, num_blocks, block_size, uuid?}",
            malloc_create,
        ),
        m("bdev_malloc_delete", "Delete a malloc bdev {name}", malloc_delete),
        m(
            "bdev_null_create",
            "Create a null bdev {name, num_blocks, block_size, uuid?}",
            null_create,
        ),
        m("bdev_null_delete", "Delete a null bdev {name}", null_delete),
        m(
            "bdev_uring_create",
            "Create an io_uring bdev on a file or block device {name, filename, block_size?}",
            uring_create,
        ),
        m("bdev_uring_delete", "Delete a uring bdev {name}", uring_delete),
        m(
            "bdev_error_create",
            "Create EE_<base_name>, an error-injection bdev on a base {base_name, uuid?}",
            error_create,
        ),
        m("bdev_error_delete", "Delete an error bdev {name}", error_delete),
        m(
            "bdev_error_inject_error",
            "Fail or hold the next N I/Os {name, io_type, error_type, num?}",
            inject_error,
        ),
        m(
            "bdev_delay_create",
            "Create a delay bdev on a base {base_bdev_name, name, avg/p99 read/write latency in us}",
            delay_create,
        ),
        m("bdev_delay_delete", "Delete a delay bdev {name}", delay_delete),
        m(
            "bdev_delay_update_latency",
            "Change one latency of a delay bdev {delay_bdev_name, latency_type, latency_us}",
            delay_update_latency,
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalName {
    #[serde(default)]
    name: Option<String>,
    /// ms to wait for the named bdev to appear (SPDK's `timeout`).
    #[serde(default)]
    timeout: u64,
}

/// The bdevs a call is about: every one, or the named one (waiting up to `timeout_ms`).
fn select(
    s: &Services,
    name: Option<&str>,
    timeout_ms: u64,
) -> Result<Vec<(BdevId, BdevRef, Option<String>)>, RpcError> {
    if timeout_ms > MAX_WAIT_MS {
        return Err(RpcError::invalid_params(format!(
            "parameter 'timeout': {timeout_ms} ms is above the limit of {MAX_WAIT_MS} ms"
        )));
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let found: Vec<_> = s
            .registry
            .list()
            .into_iter()
            .filter(|l| name.is_none_or(|n| l.bdev.info().name == n))
            .map(|l| (l.id, l.bdev, l.claimed_by))
            .collect();
        match name {
            Some(n) if found.is_empty() => {
                if Instant::now() >= deadline {
                    return Err(BdevError::NotFound(n.to_string()).into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return Ok(found),
        }
    }
}

fn get_bdevs(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: OptionalName = parse_params(params)?;
    let rows: Vec<Value> = select(s, p.name.as_deref(), p.timeout)?
        .into_iter()
        .map(|(_, bdev, claimed_by)| {
            let info = bdev.info();
            let mut types = Map::new();
            for t in IoType::ALL {
                types.insert(t.name().into(), json!(info.supported.contains(t)));
            }
            json!({
                "name": info.name,
                "aliases": [],
                "product_name": info.product_name,
                "block_size": info.block_size,
                "num_blocks": info.num_blocks,
                "uuid": info.uuid,
                "claimed": claimed_by.is_some(),
                "claimed_by": claimed_by,
                "supported_io_types": types,
                "driver_specific": bdev.driver_specific(),
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

fn get_iostat(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: OptionalName = parse_params(params)?;
    let bdevs = select(s, p.name.as_deref(), p.timeout)?;
    let ids: Vec<BdevId> = bdevs.iter().map(|(id, _, _)| *id).collect();
    let mut totals = vec![IoStat::default(); ids.len()];
    for r in 0..s.engine.reactor_count() {
        let ids = ids.clone();
        let per_reactor = s.engine.call_wait(r, REACTOR_DEADLINE, move |reactor| {
            let ctx = reactor.ctx();
            ids.iter().map(|&id| ctx.iostat(id)).collect::<Vec<_>>()
        })?;
        for (total, stat) in totals.iter_mut().zip(per_reactor) {
            if let Some(stat) = stat {
                total.merge(&stat);
            }
        }
    }
    let rows: Vec<Value> = bdevs
        .iter()
        .zip(&totals)
        .map(|((_, bdev, _), stat)| stat.to_json(&bdev.info().name))
        .collect();
    Ok(json!({"tick_rate": 1_000_000_000u64, "ticks": crate::time::now(), "bdevs": rows}))
}

/// Removes a bdev of the given product, then waits for every reactor to drop its channel.
fn delete_bdev(s: &Services, name: &str, product: &str, kind: &str) -> Result<(), RpcError> {
    let (id, bdev) = s
        .registry
        .lookup(name)
        .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if bdev.info().product_name != product {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!(
                "bdev '{name}' is a '{}', not a {kind} bdev",
                bdev.info().product_name
            ),
        ));
    }
    s.registry.unregister(name)?;
    if let Some(e) = bdev.downcast_ref::<crate::bdev::error::ErrorBdev>() {
        // Held I/O goes on to the base, so the channels holding it can drain.
        e.injection()
            .inject(InjectTarget::Clear, ErrorKind::Failure, 0);
    }
    close_channels(s, id, name)
}

pub(super) fn close_channels(s: &Services, id: BdevId, name: &str) -> Result<(), RpcError> {
    let open = s.engine.close_channels(id, CLOSE_DEADLINE)?;
    if open > 0 {
        log::warn!("bdev '{name}' is deleted, but {open} channel(s) still hold I/O");
        return Err(RpcError::internal(format!(
            "bdev '{name}' was removed, but {open} reactor(s) still hold its I/O after {} s; \
             they close when it completes",
            CLOSE_DEADLINE.as_secs()
        )));
    }
    Ok(())
}

fn inject_error(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: InjectParams = parse_params(params)?;
    let (_, bdev) = s
        .registry
        .lookup(&p.name)
        .ok_or_else(|| BdevError::NotFound(p.name.clone()))?;
    let error_bdev = bdev
        .downcast_ref::<crate::bdev::error::ErrorBdev>()
        .ok_or_else(|| {
            RpcError::new(
                -libc::ENODEV,
                format!("bdev '{}' is not an error bdev", p.name),
            )
        })?;
    error_bdev
        .injection()
        .inject(p.io_type, p.error_type, p.num);
    log::info!(
        "bdev_error_inject_error: '{}' {:?} {:?} x{}",
        p.name,
        p.io_type,
        p.error_type,
        p.num
    );
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateLatencyParams {
    delay_bdev_name: String,
    latency_type: LatencyType,
    latency_us: u64,
}

fn delay_update_latency(
    s: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: UpdateLatencyParams = parse_params(params)?;
    let (_, bdev) = s
        .registry
        .lookup(&p.delay_bdev_name)
        .ok_or_else(|| BdevError::NotFound(p.delay_bdev_name.clone()))?;
    let delay = bdev
        .downcast_ref::<crate::bdev::delay::DelayBdev>()
        .ok_or_else(|| {
            RpcError::new(
                -libc::ENODEV,
                format!("bdev '{}' is not a delay bdev", p.delay_bdev_name),
            )
        })?;
    delay.latencies().update(p.latency_type, p.latency_us)?;
    Ok(json!(true))
}
