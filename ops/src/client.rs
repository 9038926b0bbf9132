//! A small HTTP/1.1 JSON client for a node's admin API, one request per connection,
//! bounded by a timeout so an unresponsive node never hangs the CLI.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;

/// Bound on connecting, sending and reading one whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A non-2xx answer of the admin API: its status decides `switchctl`'s exit code.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// What the node said.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// A node's admin API at `host:port`.
pub struct Admin {
    addr: String,
    token: Option<String>,
}

impl Admin {
    /// The API at `addr` (`host:port`; a leading `http://` is accepted), called with
    /// the bearer `token` when there is one.
    pub fn new(addr: &str, token: Option<String>) -> Admin {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        Admin {
            addr: addr.to_owned(),
            token,
        }
    }

    async fn bounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let payload = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
        self.bounded_raw(method, path, payload, TIMEOUT).await
    }

    async fn bounded_raw(
        &self,
        method: Method,
        path: &str,
        payload: Option<(Bytes, &'static str)>,
        timeout: Duration,
    ) -> anyhow::Result<(u16, Bytes)> {
        let exchange = self.exchange(method.clone(), path, payload);
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            anyhow!(
                "the admin API at {} did not answer {method} {path} within {timeout:?}; is the node overloaded or stuck?",
                self.addr
            )
        })?
    }

    /// Sends `payload` (bytes of type `content_type`, or none) and answers the raw body
    /// of a 2xx answer (backups), allowing `timeout` for a large transfer.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        payload: Option<(Bytes, &'static str)>,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        let (status, text) = self.bounded_raw(method, path, payload, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(self.failed(status, &text).into());
        }
        Ok(text)
    }

    fn failed(&self, status: u16, text: &[u8]) -> ApiError {
        let message = serde_json::from_slice::<Value>(text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(text).into_owned());
        let hint = match (status, self.token.is_some()) {
            (401, false) => " (no token given: use --token, SWITCHCTL_TOKEN or the config file)",
            _ => "",
        };
        ApiError {
            status,
            message: format!("{} answered {status}: {message}{hint}", self.addr),
        }
    }

    /// Sends one request; a non-2xx answer is an error carrying the node's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.bounded(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            return Err(self.failed(status, &text).into());
        }
        let json: Option<Value> = serde_json::from_slice(&text).ok();
        json.ok_or_else(|| {
            anyhow!(
                "{} answered {method} {path} with something other than JSON",
                self.addr
            )
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        payload: Option<(Bytes, &'static str)>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.with_context(|| {
            format!(
                "cannot reach the admin API at {}; is the node running, and is --admin (or SWITCHCTL_ADMIN) its [admin] listen address?",
                self.addr
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {} failed", self.addr))?;
        // The connection task drives the socket; it ends when the answer is read.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (payload, content_type) = payload.unwrap_or((Bytes::new(), "application/json"));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str())
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(payload))
            .context("cannot build the request")?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("the request to {} failed", self.addr))?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("cannot read the answer from {}", self.addr))?
            .to_bytes();
        Ok((status, text))
    }
}
