//! The `nvme` bdev's methods (PCIe through VFIO, and NVMe/TCP), with SPDK's names and parameters:
//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`, `bdev_nvme_get_controllers`.
//!
//! Attach makes one bdev per active namespace (`NAMEn1`, …) and returns their names; it is
//! all or nothing, and a second attach of a name or a PCI address already attached is refused
//! before the device is touched. Detach refuses while any of the controller's bdevs is
//! claimed (a pool member, an export), and otherwise removes them all, closes every
//! reactor's queue pair, and disables the controller when the last one is gone.

use super::bdev::close_channels;
use super::Method;
use crate::bdev::nvme::NvmeBdev;
use crate::bdev::{BdevError, BdevId};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn methods() -> Vec<Method> {
    let m = |name, help, handler| Method {
        name,
        help,
        handler,
    };
    vec![
        m(
            "bdev_nvme_attach_controller",
            "Attach an NVMe controller {name, trtype: PCIe, traddr: BDF} or an NVMe/TCP subsystem {name, trtype: TCP, traddr: IP, trsvcid: PORT, subnqn, adrfam?, hostnqn?, hdgst?, ddgst?, ctrlr_loss_timeout_sec?, reconnect_delay_sec?, fast_io_fail_timeout_sec?, keep_alive_timeout_ms?}, with io_queue_entries?, timeout_ms?; one bdev per namespace",
            attach,
        ),
        m(
            "bdev_nvme_detach_controller",
            "Detach an NVMe controller and remove its bdevs {name}",
            detach,
        ),
        m(
            "bdev_nvme_get_controllers",
            "NVMe controllers: identity, namespaces, each reactor's queue pair, errors by status {name?}",
            get_controllers,
        ),
    ]
}

fn attach(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let made = crate::config::create_bdevs(
        &s.registry,
        "bdev_nvme_attach_controller",
        params.unwrap_or(Value::Null),
    )?;
    let names: Vec<String> = made.into_iter().map(|(_, n)| n).collect();
    log::info!("bdev_nvme_attach_controller: created {}", names.join(", "));
    Ok(json!(names))
}

/// The registered bdevs of controller `name`.
fn bdevs_of(s: &Services, name: &str) -> Vec<(BdevId, String, Option<String>)> {
    s.registry
        .list()
        .into_iter()
        .filter(|l| {
            l.bdev
                .downcast_ref::<NvmeBdev>()
                .is_some_and(|n| n.controller().name() == name)
        })
        .map(|l| (l.id, l.bdev.info().name.clone(), l.claimed_by))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
}

fn detach(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: DetachParams = parse_params(params)?;
    let bdevs = bdevs_of(s, &p.name);
    if bdevs.is_empty() {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!("no NVMe controller named '{}'", p.name),
        ));
    }
    if let Some((_, bdev, Some(user))) = bdevs.iter().find(|(_, _, c)| c.is_some()) {
        return Err(BdevError::InUse {
            name: bdev.clone(),
            user: user.clone(),
        }
        .into());
    }
    for (_, name, _) in &bdevs {
        s.registry.unregister(name)?;
    }
    for (id, name, _) in &bdevs {
        close_channels(s, *id, name)?;
    }
    log::info!("bdev_nvme_detach_controller: detached '{}'", p.name);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    name: Option<String>,
}

fn get_controllers(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetParams = parse_params(params)?;
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for l in s.registry.list() {
        let Some(n) = l.bdev.downcast_ref::<NvmeBdev>() else {
            continue;
        };
        let c = n.controller();
        if seen.iter().any(|x| x == c.name()) || p.name.as_deref().is_some_and(|x| x != c.name()) {
            continue;
        }
        seen.push(c.name().to_string());
        out.push(c.report());
    }
    if let Some(name) = p.name.filter(|_| out.is_empty()) {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!("no NVMe controller named '{name}'"),
        ));
    }
    Ok(Value::Array(out))
}
