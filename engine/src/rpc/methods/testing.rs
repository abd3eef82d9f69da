//! Methods that break the daemon on purpose, for the process tests: `test_inject_panic`.
//!
//! Contract: these are not in [`super::all`]. A server serves them only when its owner adds
//! them to the table, and `tidepoold` does that only when started with `--test-rpcs`; a
//! daemon started without the flag does not know the names (-32601, and `rpc_get_methods`
//! does not list them). A runtime flag rather than a cargo feature: the process tests then
//! run the very binary that ships (a feature would be switched on for the whole workspace by
//! cargo's feature unification whenever the tests are built, so the shipped `tidepoold`
//! would carry the method anyway, silently).

use super::Method;
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::Value;

pub fn methods() -> Vec<Method> {
    vec![Method {
        name: "test_inject_panic",
        help: "TEST ONLY (--test-rpcs): panic on reactor `reactor`, or in this RPC handler when no reactor is given",
        handler: test_inject_panic,
    }]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectPanicParams {
    /// The reactor (index, as `framework_get_reactors` lists them) to panic on; none: the RPC
    /// handler's own thread panics.
    #[serde(default)]
    reactor: Option<usize>,
}

/// The message every injected panic carries, so a test can find it in the log.
pub const INJECTED_PANIC: &str = "test_inject_panic: injected panic";

fn test_inject_panic(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: InjectPanicParams = parse_params(params)?;
    let Some(reactor) = p.reactor else {
        panic!("{INJECTED_PANIC} in an RPC handler");
    };
    if reactor >= services.engine.reactor_count() {
        return Err(RpcError::invalid_params(format!(
            "parameter 'reactor': {reactor} does not exist (there are {})",
            services.engine.reactor_count()
        )));
    }
    services.engine.call(reactor, move |_| {
        panic!("{INJECTED_PANIC} on reactor {reactor}")
    })?;
    // The message is queued; with tidepoold's panic hook the process is gone once the reactor
    // takes it, and this answer may or may not reach the client first.
    Ok(Value::Bool(true))
}
