//! Building the admin API's JSON answers, so every handler shapes them the same way.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The answer to one request.
pub type Reply = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error response whose message says what went wrong and what to do next.
pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, serde_json::json!({ "error": message.into() }))
}

/// 400 for a request field that breaks a rule, naming the field.
pub fn field_error(field: &str, reason: &str) -> Reply {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": format!("{field}: {reason}"), "field": field }),
    )
}

/// A file to download (`Content-Disposition: attachment`).
pub fn attachment(body: Vec<u8>, content_type: &'static str, filename: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}
