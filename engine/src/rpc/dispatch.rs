//! One JSON value in, the response bytes out, per JSON-RPC 2.0.
//!
//! A request is an object with `"jsonrpc": "2.0"`, a string `method`, optional `params` (object
//! or array) and an optional `id` (string, number or null). Without an `id` it is a
//! notification: it runs and gets no response. A batch is an array of requests; it gets an
//! array of the responses that are due, or nothing if all were notifications; an empty batch
//! is itself an invalid request. A batch's requests run in order.

use super::methods::Method;
use super::{RpcError, Services, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
use serde_json::{json, Map, Value};

/// Most requests in one batch.
pub const MAX_BATCH: usize = 1024;

/// Handles one complete JSON value from a connection; `None` when nothing is to be sent.
pub fn handle(services: &Services, methods: &[Method], raw: &[u8]) -> Option<Vec<u8>> {
    let value: Value = match crate::json_strict::from_slice(raw) {
        Ok(v) => v,
        Err(e) => {
            return Some(encode(&error_response(
                Value::Null,
                &RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
            )))
        }
    };
    let response = match value {
        Value::Array(batch) if batch.is_empty() => Some(error_response(
            Value::Null,
            &RpcError::new(INVALID_REQUEST, "an empty batch is not a request"),
        )),
        Value::Array(batch) if batch.len() > MAX_BATCH => Some(error_response(
            Value::Null,
            &RpcError::new(
                INVALID_REQUEST,
                format!("a batch holds at most {MAX_BATCH} requests"),
            ),
        )),
        Value::Array(batch) => {
            let answers: Vec<Value> = batch
                .into_iter()
                .filter_map(|r| one(services, methods, r))
                .collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        single => one(services, methods, single),
    };
    response.map(|r| encode(&r))
}

pub fn encode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serializes")
}

/// The error response for request `id` (null when the request's id is unknown).
pub fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
}

/// A request, checked for shape.
struct Request {
    method: String,
    params: Option<Value>,
    /// `None` for a notification.
    id: Option<Value>,
}

fn parse_request(value: Value) -> Result<Request, (Value, RpcError)> {
    let invalid = |id: Value, why: &str| (id, RpcError::new(INVALID_REQUEST, why.to_string()));
    let Value::Object(mut obj) = value else {
        return Err(invalid(Value::Null, "a request must be a JSON object"));
    };
    // The id comes first so that the error for a malformed request can carry it back.
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Err(invalid(
                Value::Null,
                "'id' must be a string, number or null",
            ))
        }
    };
    let id_or_null = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(invalid(id_or_null, "'jsonrpc' must be \"2.0\""));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(invalid(id_or_null, "'method' must be a string")),
        None => return Err(invalid(id_or_null, "'method' is missing")),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => {
            return Err(invalid(
                id_or_null,
                "'params' must be an object or an array",
            ))
        }
    };
    obj.remove("jsonrpc");
    if let Some(extra) = obj.keys().next() {
        return Err(invalid(
            id_or_null,
            &format!("unexpected member '{extra}' in the request"),
        ));
    }
    Ok(Request { method, params, id })
}

/// Runs method `name` with `params` (for requests, and for config entries run at start-up).
pub fn call(
    services: &Services,
    methods: &[Method],
    name: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    match methods.iter().find(|m| m.name == name) {
        None => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("method '{name}' not found"),
        )),
        Some(m) => (m.handler)(services, methods, params),
    }
}

/// Runs one request; the response, unless it was a notification.
fn one(services: &Services, methods: &[Method], value: Value) -> Option<Value> {
    let request = match parse_request(value) {
        Ok(r) => r,
        Err((id, e)) => return Some(error_response(id, &e)),
    };
    let result = call(services, methods, &request.method, request.params);
    let id = request.id?;
    Some(match result {
        Ok(result) => {
            let mut r = Map::new();
            r.insert("jsonrpc".into(), "2.0".into());
            r.insert("result".into(), result);
            r.insert("id".into(), id);
            Value::Object(r)
        }
        Err(e) => error_response(id, &e),
    })
}
