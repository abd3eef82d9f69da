//! NVMe-oF target methods, SPDK's names and parameters: the transport
//! (`nvmf_create_transport`, `nvmf_get_transports`), subsystems (`nvmf_create_subsystem`,
//! `nvmf_delete_subsystem`, `nvmf_get_subsystems`) and what each holds (namespaces, hosts,
//! listeners), and the connections the target reports (`nvmf_subsystem_get_controllers`,
//! `_get_qpairs`, `_get_listeners`). The state lives in [`crate::nvmf::subsystem`]; each
//! method here only parses its params and calls it.

use super::Method;
use crate::nvmf::subsystem::{
    ListenAddress, NamespaceParams, SubsystemParams, Subsystems, TransportOptions,
};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

type NvmfHandler = fn(&Subsystems, Option<Value>) -> Result<Value, RpcError>;

/// One list makes both [`TABLE`] (for [`call`]) and the method table's entries, whose
/// handlers reach the same functions through `Services::nvmf`.
macro_rules! nvmf_methods {
    ($(($name:literal, $help:literal, $f:ident)),* $(,)?) => {
        /// Every method: name, help, handler.
        const TABLE: &[(&str, &str, NvmfHandler)] = &[$(($name, $help, $f)),*];

        pub fn methods() -> Vec<Method> {
            vec![$(Method {
                name: $name,
                help: $help,
                handler: {
                    fn handler(
                        s: &Services,
                        _: &[Method],
                        p: Option<Value>,
                    ) -> Result<Value, RpcError> {
                        $f(&s.nvmf, p)
                    }
                    handler
                },
            }),*]
        }
    };
}

nvmf_methods![
    (
        "nvmf_create_transport",
        "Create the TCP transport (trtype, max_queue_depth, max_io_qpairs_per_ctrlr, ...); once",
        create_transport
    ),
    (
        "nvmf_get_transports",
        "The transport and its options",
        get_transports
    ),
    (
        "nvmf_create_subsystem",
        "Create an NVM subsystem: nqn, serial_number, model_number, allow_any_host, max_namespaces",
        create_subsystem
    ),
    (
        "nvmf_delete_subsystem",
        "Delete a subsystem with no controller connected; its bdevs are released",
        delete_subsystem
    ),
    (
        "nvmf_get_subsystems",
        "Subsystems with their listeners, hosts and namespaces (or the one named by nqn)",
        get_subsystems
    ),
    (
        "nvmf_subsystem_add_ns",
        "Serve a bdev as a namespace: nqn, namespace {bdev_name, nsid, uuid}; returns the nsid",
        add_ns
    ),
    (
        "nvmf_subsystem_remove_ns",
        "Remove namespace nsid from subsystem nqn and release its bdev",
        remove_ns
    ),
    (
        "nvmf_subsystem_add_listener",
        "Listen for subsystem nqn on listen_address {trtype, adrfam, traddr, trsvcid}",
        add_listener
    ),
    (
        "nvmf_subsystem_remove_listener",
        "Stop listening for subsystem nqn on listen_address",
        remove_listener
    ),
    (
        "nvmf_subsystem_add_host",
        "Allow host (a host NQN) to connect to subsystem nqn",
        add_host
    ),
    (
        "nvmf_subsystem_remove_host",
        "Take host off subsystem nqn's allowed hosts",
        remove_host
    ),
    (
        "nvmf_subsystem_allow_any_host",
        "Let any host connect to subsystem nqn (allow_any_host true) or the listed ones only",
        allow_any_host
    ),
    (
        "nvmf_subsystem_get_controllers",
        "Controllers connected to subsystem nqn",
        get_controllers
    ),
    (
        "nvmf_subsystem_get_qpairs",
        "Queue pairs connected to subsystem nqn",
        get_qpairs
    ),
    (
        "nvmf_subsystem_get_listeners",
        "Listeners of subsystem nqn",
        get_listeners
    ),
];

/// Runs nvmf method `name` on `nvmf` (the unit tests call the methods this way, without an
/// engine).
pub fn call(nvmf: &Subsystems, name: &str, params: Option<Value>) -> Result<Value, RpcError> {
    match TABLE.iter().find(|(n, _, _)| *n == name) {
        Some((_, _, handler)) => handler(nvmf, params),
        None => Err(RpcError::new(
            crate::rpc::METHOD_NOT_FOUND,
            format!("method '{name}' not found"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnParam {
    nqn: String,
}

fn create_transport(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: TransportOptions = parse_params(params)?;
    nvmf.create_transport(p)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransportsParams {
    #[serde(default)]
    trtype: Option<String>,
}

fn get_transports(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetTransportsParams = parse_params(params)?;
    if let Some(t) = p.trtype.filter(|t| !t.eq_ignore_ascii_case("tcp")) {
        return Err(RpcError::new(
            -libc::ENODEV,
            format!("no transport of type '{t}' (only TCP is supported)"),
        ));
    }
    Ok(nvmf.transports_json())
}

fn create_subsystem(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: SubsystemParams = parse_params(params)?;
    nvmf.create_subsystem(p)?;
    Ok(json!(true))
}

fn delete_subsystem(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NqnParam = parse_params(params)?;
    nvmf.delete_subsystem(&p.nqn)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSubsystemsParams {
    #[serde(default)]
    nqn: Option<String>,
}

fn get_subsystems(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetSubsystemsParams = parse_params(params)?;
    Ok(nvmf.subsystems_json(p.nqn.as_deref())?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNsParams {
    nqn: String,
    namespace: NamespaceParams,
}

fn add_ns(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: AddNsParams = parse_params(params)?;
    Ok(json!(nvmf.add_namespace(&p.nqn, p.namespace)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNsParams {
    nqn: String,
    nsid: u32,
}

fn remove_ns(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: RemoveNsParams = parse_params(params)?;
    nvmf.remove_namespace(&p.nqn, p.nsid)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    listen_address: ListenAddress,
}

fn add_listener(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: ListenerParams = parse_params(params)?;
    nvmf.add_listener(&p.nqn, p.listen_address)?;
    Ok(json!(true))
}

fn remove_listener(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: ListenerParams = parse_params(params)?;
    nvmf.remove_listener(&p.nqn, p.listen_address)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
}

fn add_host(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: HostParams = parse_params(params)?;
    nvmf.add_host(&p.nqn, &p.host)?;
    Ok(json!(true))
}

fn remove_host(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: HostParams = parse_params(params)?;
    nvmf.remove_host(&p.nqn, &p.host)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAnyHostParams {
    nqn: String,
    allow_any_host: bool,
}

fn allow_any_host(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: AllowAnyHostParams = parse_params(params)?;
    nvmf.set_allow_any_host(&p.nqn, p.allow_any_host)?;
    Ok(json!(true))
}

fn get_controllers(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NqnParam = parse_params(params)?;
    Ok(nvmf.controllers_json(&p.nqn)?)
}

fn get_qpairs(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NqnParam = parse_params(params)?;
    Ok(nvmf.qpairs_json(&p.nqn)?)
}

fn get_listeners(nvmf: &Subsystems, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NqnParam = parse_params(params)?;
    Ok(nvmf.listeners_json(&p.nqn)?)
}
