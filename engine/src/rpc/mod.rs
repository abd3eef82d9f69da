//! JSON-RPC 2.0 control plane, in SPDK's conventions.
//!
//! - [`framing`] cuts a connection's byte stream into JSON values (no length prefix, no
//!   separator needed), refusing a value past a size limit before buffering it whole.
//! - [`dispatch`] turns one value (a request, a notification or a batch) into the response
//!   bytes, per JSON-RPC 2.0: -32700 parse error, -32600 invalid request, -32601 method not
//!   found, -32602 invalid params (naming the parameter), -32603 internal error. Domain
//!   failures use SPDK's codes, a negated errno (`-EEXIST`, `-ENODEV`, `-EBUSY`, `-ENOSPC`),
//!   with a message a person can act on.
//! - [`server`] serves a Unix socket: one thread per client (bounded), so one client's garbage
//!   or slowness affects only its own connection. Control threads stay off reactor cores when
//!   the host has cores without reactors.
//! - [`client`] is the small client `tpctl` and the RPC benchmark share.
//! - [`methods`] is the method table; each method is a plain function of [`Services`] and its
//!   params. Bdev backends' own methods sit in [`methods::bdev`] next to the generic ones.
//!
//! The control plane reaches reactors only through [`Engine::call_wait`] (a closure run on the
//! reactor, with a deadline), never by touching their state.

pub mod client;
pub mod dispatch;
pub mod framing;
pub mod methods;
pub mod server;

use crate::balancer::Balancer;
use crate::bdev::{BdevError, BdevRegistry};
use crate::config::CreateError;
use crate::nbd::{NbdError, NbdService};
use crate::nvmf::subsystem::{ListenerBinder, NvmfError, Subsystems};
use crate::nvmf::target::NvmfTarget;
use crate::pool::{PoolError, PoolService};
use crate::reactor::{Engine, EngineError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// The largest request accepted on a connection.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;

/// An error response's `code` and `message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> RpcError {
        let code = match &e {
            BdevError::Exists(_) | BdevError::UuidExists { .. } => -libc::EEXIST,
            BdevError::NotFound(_) => -libc::ENODEV,
            BdevError::InUse { .. } => -libc::EBUSY,
            BdevError::InvalidParam { .. } => INVALID_PARAMS,
            BdevError::Os { .. } => -libc::EIO,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<CreateError> for RpcError {
    fn from(e: CreateError) -> RpcError {
        match e {
            CreateError::UnknownMethod(m) => {
                RpcError::new(METHOD_NOT_FOUND, format!("unknown method '{m}'"))
            }
            CreateError::Params(p) => RpcError::invalid_params(p),
            CreateError::Bdev(b) => b.into(),
        }
    }
}

impl From<EngineError> for RpcError {
    fn from(e: EngineError) -> RpcError {
        RpcError::internal(e.to_string())
    }
}

/// What the methods work on.
pub struct Services {
    pub engine: Arc<Engine>,
    pub registry: Arc<BdevRegistry>,
    pub nbd: NbdService,
    pub nvmf: Arc<Subsystems>,
    pub pools: Arc<PoolService>,
    pub balancer: Balancer,
}

impl Services {
    pub fn new(engine: &Arc<Engine>, registry: &Arc<BdevRegistry>) -> Services {
        let pools = Arc::new(PoolService::new(Arc::clone(engine), Arc::clone(registry)));
        let nvmf = Arc::new(Subsystems::new(Arc::clone(registry)));
        // The NVMe/TCP target, made with the transport (its limits are the transport's). It
        // and the registry hold each other until `Subsystems::clear_binder` (at shutdown).
        let (for_target, directory) = (Arc::clone(engine), Arc::downgrade(&nvmf));
        nvmf.set_binder_factory(Box::new(move |options| {
            let directory = directory.upgrade().ok_or("the nvmf registry is gone")?;
            let target = NvmfTarget::new(Arc::clone(&for_target), directory, options.limits())
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(target) as Arc<dyn ListenerBinder>)
        }));
        Services {
            engine: Arc::clone(engine),
            registry: Arc::clone(registry),
            nbd: NbdService::new(Arc::clone(engine), Arc::clone(registry)),
            nvmf,
            balancer: Balancer::start(Arc::clone(engine), Arc::clone(&pools)),
            pools,
        }
    }
}

impl From<NbdError> for RpcError {
    fn from(e: NbdError) -> RpcError {
        let e = match e {
            NbdError::Bdev(b) => return b.into(),
            other => other,
        };
        let code = match &e {
            NbdError::Exists(_) | NbdError::Running(_) => -libc::EEXIST,
            NbdError::NotFound(_) | NbdError::NotRunning => -libc::ENODEV,
            NbdError::InvalidParam { .. } => INVALID_PARAMS,
            NbdError::Busy(_) => -libc::EBUSY,
            NbdError::Bdev(_) => unreachable!("converted above"),
            NbdError::Listen { .. } => -libc::EADDRINUSE,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> RpcError {
        let code = match &e {
            NvmfError::Bdev(_) => match e {
                NvmfError::Bdev(b) => return b.into(),
                _ => unreachable!("matched above"),
            },
            NvmfError::InvalidParam { .. } => INVALID_PARAMS,
            NvmfError::Exists(_) => -libc::EEXIST,
            NvmfError::NotFound(_) => -libc::ENODEV,
            NvmfError::Busy(_) => -libc::EBUSY,
            NvmfError::Limit(_) => -libc::ENOSPC,
            NvmfError::NoTransport(_) => -libc::EINVAL,
            NvmfError::HostNotAllowed { .. } => -libc::EPERM,
            NvmfError::Listen { .. } => -libc::EADDRINUSE,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<PoolError> for RpcError {
    fn from(e: PoolError) -> RpcError {
        let code = match &e {
            PoolError::Bdev(_) => match e {
                PoolError::Bdev(b) => return b.into(),
                _ => unreachable!("matched above"),
            },
            PoolError::Exists(_) => -libc::EEXIST,
            PoolError::NotFound(_)
            | PoolError::VolumeNotFound(_)
            | PoolError::Degraded(_)
            | PoolError::NoPool(_) => -libc::ENODEV,
            PoolError::Busy(_) => -libc::EBUSY,
            PoolError::NoSpace(_) => -libc::ENOSPC,
            PoolError::InvalidParam { .. } => INVALID_PARAMS,
            PoolError::Io(_) => -libc::EIO,
            // The outcome of the call is not known: SPDK's way of saying "timed out".
            PoolError::Unknown(_) => -libc::ETIMEDOUT,
            PoolError::Suspended(_) => -libc::EROFS,
        };
        RpcError::new(code, e.to_string())
    }
}

/// Deserializes a method's params (absent params are an empty object); the error names the
/// parameter that is wrong and says how.
pub fn parse_params<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    crate::config::parse_params(params.unwrap_or(Value::Null)).map_err(RpcError::invalid_params)
}
