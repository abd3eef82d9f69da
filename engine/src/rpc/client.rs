//! A minimal JSON-RPC client over a Unix socket, for `tpctl` and the RPC benchmark: one
//! connection, one call at a time. Responses are cut from the stream with the server's own
//! [`Splitter`], so client and server agree on framing by construction.

use super::framing::Splitter;
use super::MAX_REQUEST_BYTES;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to tidepoold at '{socket}': {reason} (is it running, on that socket?)"
    )]
    Connect { socket: String, reason: String },
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    #[error("reading the response: {0}")]
    Receive(std::io::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection without answering")]
    Closed,
    #[error("bad response: {0}")]
    BadResponse(String),
}

pub struct RpcClient {
    stream: UnixStream,
    splitter: Splitter,
    buf: Vec<u8>,
    timeout: Duration,
}

impl RpcClient {
    /// Connects; a response that does not arrive within `timeout` fails the call.
    pub fn connect(socket: &str, timeout: Duration) -> Result<RpcClient, ClientError> {
        let connect_error = |e: std::io::Error| ClientError::Connect {
            socket: socket.to_string(),
            reason: e.to_string(),
        };
        let stream = UnixStream::connect(socket).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_error)?;
        Ok(RpcClient {
            stream,
            // A response may be far larger than a request (save_config of many bdevs).
            splitter: Splitter::new(MAX_REQUEST_BYTES * 64),
            buf: vec![0u8; 64 * 1024],
            timeout,
        })
    }

    /// Sends `method` with `params` (id 1) and returns the whole response object.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": 1});
        if let Some(p) = params {
            request["params"] = p;
        }
        let bytes = serde_json::to_vec(&request).expect("a JSON value serializes");
        let response = self.call_bytes(&bytes)?;
        serde_json::from_slice(&response).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// Sends an encoded request and returns the next response value's bytes, unparsed.
    pub fn call_bytes(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.stream.write_all(request).map_err(ClientError::Send)?;
        loop {
            if let Some(value) = self
                .splitter
                .next_value()
                .map_err(|e| ClientError::BadResponse(format!("{e:?}")))?
            {
                return Ok(value);
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.splitter.push(&self.buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(self.timeout))
                }
                Err(e) => return Err(ClientError::Receive(e)),
            }
        }
    }
}
