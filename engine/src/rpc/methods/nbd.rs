//! NBD methods: `nbd_server_start`, `nbd_server_stop`, `nbd_export_create`,
//! `nbd_export_delete`, `nbd_get_exports`. SPDK exports a bdev through a kernel `/dev/nbdX`
//! (`nbd_start_disk`); tidepool serves NBD itself, so these follow the shape of SPDK's
//! target methods (a server, then named exports) with `nbd_` names.

use super::{Method, NameParam, NoParams};
use crate::nbd::DEFAULT_LISTEN_ADDRESS;
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn methods() -> Vec<Method> {
    vec![
        Method {
            name: "nbd_server_start",
            help: "Listen for NBD clients on listen_address (host:port or unix:PATH)",
            handler: server_start,
        },
        Method {
            name: "nbd_server_stop",
            help: "Stop listening and disconnect every NBD client once its I/O is done",
            handler: server_stop,
        },
        Method {
            name: "nbd_export_create",
            help: "Export bdev_name to NBD clients under name (read_only optional)",
            handler: export_create,
        },
        Method {
            name: "nbd_export_delete",
            help: "Remove an export; its clients are disconnected after their I/O",
            handler: export_delete,
        },
        Method {
            name: "nbd_get_exports",
            help: "Exports with their bdev, geometry, connected clients and bytes moved",
            handler: get_exports,
        },
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    #[serde(default = "default_address")]
    listen_address: String,
}

fn default_address() -> String {
    DEFAULT_LISTEN_ADDRESS.to_string()
}

fn server_start(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: StartParams = parse_params(params)?;
    s.nbd.start_server(&p.listen_address)?;
    Ok(json!(true))
}

fn server_stop(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    parse_params::<NoParams>(params)?;
    s.nbd.stop_server()?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    bdev_name: String,
    #[serde(default)]
    read_only: bool,
}

fn export_create(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: CreateParams = parse_params(params)?;
    s.nbd.create_export(&p.name, &p.bdev_name, p.read_only)?;
    Ok(json!(p.name))
}

fn export_delete(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: NameParam = parse_params(params)?;
    s.nbd.delete_export(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    name: Option<String>,
}

fn get_exports(s: &Services, _: &[Method], params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetParams = parse_params(params)?;
    Ok(s.nbd.exports_json(p.name.as_deref())?)
}
