//! Reading a request's body, bounded so a client cannot make the node buffer without
//! limit, and decoding it as JSON.

use super::reply::{error, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::StatusCode;
use serde::de::DeserializeOwned;

/// The largest body the admin API accepts; its requests are a few small fields.
const MAX_BODY: usize = 64 * 1024;
/// The largest backup `POST /v1/restore` accepts (it is checked whole before use).
const MAX_BACKUP: usize = 512 * 1024 * 1024;
/// The largest PBX description `POST /v1/pbx` accepts.
const MAX_PBX: usize = 16 * 1024 * 1024;

/// The largest body accepted on `path`.
pub fn limit(path: &str) -> usize {
    match path {
        "/v1/restore" => MAX_BACKUP,
        "/v1/pbx" => MAX_PBX,
        _ => MAX_BODY,
    }
}

/// Reads the whole body (at most `limit` bytes). The error is the reply to send
/// (boxed: a response is large).
pub async fn collect(body: Incoming, limit: usize) -> Result<Bytes, Box<Reply>> {
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body ({e}); send at most {limit} bytes"),
            ))
        })?
        .to_bytes())
}

/// Decodes the body as `T`; an empty body gives `T::default()` so every field may be
/// left out.
pub fn read_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, Box<Reply>> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("the request body is not the expected JSON: {e}"),
        ))
    })
}
