//! The method table: every JSON-RPC method the control plane serves, with a one-line help.
//!
//! A handler gets the [`Services`], the table itself (for `rpc_get_methods`) and the raw
//! params; it parses them with [`super::parse_params`] so that a bad parameter is named in
//! the -32602 error, and it changes nothing unless it succeeds.

pub mod balancer;
pub mod bdev;
pub mod framework;
pub mod load;
pub mod nbd;
pub mod nvme;
pub mod nvmf;
pub mod pool;
pub mod testing;

use super::{RpcError, Services};
use serde::Deserialize;
use serde_json::Value;

/// Params of a method that takes none (an empty object, or none at all).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// Params of a method that takes only a `name`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameParam {
    pub name: String,
}

pub type Handler = fn(&Services, &[Method], Option<Value>) -> Result<Value, RpcError>;

/// One method: SPDK's name where SPDK has the concept.
pub struct Method {
    pub name: &'static str,
    pub help: &'static str,
    pub handler: Handler,
}

/// Every method tidepool serves (the test-only [`testing`] methods are not among them).
pub fn all() -> Vec<Method> {
    let mut methods = framework::methods();
    methods.extend(bdev::methods());
    methods.extend(nvme::methods());
    methods.extend(pool::methods());
    methods.extend(nbd::methods());
    methods.extend(nvmf::methods());
    methods.extend(load::methods());
    methods.extend(balancer::methods());
    methods
}
