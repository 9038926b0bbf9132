//! The admin HTTP listener (hyper, HTTP/1.1, JSON): what `switchctl` and operators'
//! tools talk to. It answers `/healthz`, `/readyz`, the node's counters, Prometheus'
//! `/metrics` (see [`prometheus`]) and the cluster operations (`/v1/cluster...`, see
//! [`cluster`]).

mod body;
mod cluster;
mod data;
mod extensions;
pub mod prometheus;
mod reply;

pub use data::Data;

use crate::cluster::ReplicatedState;
use crate::metrics::Metrics;
use consensus::join::{Enroller, QuicConsensus};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use reply::{error, json, Reply};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers can see.
pub struct AdminState {
    /// This node's id.
    pub node_id: u64,
    /// Process counters.
    pub metrics: Arc<Metrics>,
    /// When the node started.
    pub started: Instant,
    /// Issues join tokens; `None` if this node's data dir lacks the cluster CA key.
    pub enroller: Option<Arc<Enroller>>,
    /// The node's state (extensions, calls), and its Raft member if it has one.
    pub data: Data,
    /// The media relay, for its counters; `None` without `[media] enabled`.
    pub relay: Option<Arc<media::backend::MediaRelay>>,
}

impl AdminState {
    /// The node's Raft member; `None` on a standalone node. Weak, so the admin task
    /// never keeps Raft from shutting down with the node.
    pub fn member(&self) -> Option<&Weak<QuicConsensus<ReplicatedState>>> {
        match &self.data {
            Data::Cluster(member) => Some(member),
            Data::Local { .. } => None,
        }
    }
}

/// Binds the listener (so a taken port fails the node's start-up) and serves it until
/// the task is dropped; returns the bound address.
pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, state));
    Ok(local)
}

async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// 405 naming the method to use instead.
fn not_allowed(method: &Method, path: &str, allowed: &'static str) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; use {allowed}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    r
}

async fn route(state: Arc<AdminState>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let get_only = |handler: fn(&AdminState) -> Reply| {
        if method == Method::GET {
            handler(&state)
        } else {
            not_allowed(&method, &path, "GET")
        }
    };
    match path.as_str() {
        "/healthz" => return get_only(healthz),
        "/readyz" => return get_only(cluster::ready),
        "/v1/counters" => return get_only(counters),
        "/metrics" => return get_only(prometheus::metrics),
        "/v1/cluster" if method == Method::GET => return cluster::status(state).await,
        "/v1/cluster" => return not_allowed(&method, &path, "GET"),
        "/v1/cluster/tokens" if method == Method::POST => {
            return cluster::issue_token(state, req.into_body()).await
        }
        "/v1/cluster/tokens" => return not_allowed(&method, &path, "POST"),
        "/v1/cluster/transfer-leader" if method == Method::POST => {
            return cluster::transfer_leader(state, req.into_body()).await
        }
        "/v1/cluster/transfer-leader" => return not_allowed(&method, &path, "POST"),
        _ => {}
    }
    match path.as_str() {
        "/v1/extensions" if method == Method::GET => return extensions::list(&state.data),
        "/v1/extensions" if method == Method::POST => {
            return extensions::create(&state.data, req.into_body()).await
        }
        "/v1/extensions" => return not_allowed(&method, &path, "GET, POST"),
        "/v1/calls" if method == Method::GET => return calls(&state.data),
        "/v1/calls" => return not_allowed(&method, &path, "GET"),
        _ => {}
    }
    if let Some(number) = path.strip_prefix("/v1/extensions/") {
        let data = &state.data;
        return match method {
            Method::GET => extensions::get(data, number),
            Method::PATCH => extensions::change(data, number, req.into_body()).await,
            Method::DELETE => extensions::remove(data, number, req.uri().query()).await,
            _ => not_allowed(&method, &path, "GET, PATCH, DELETE"),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/cluster/members/") {
        match rest.split_once('/') {
            None if method == Method::DELETE => return cluster::remove(state, rest).await,
            None => return not_allowed(&method, &path, "DELETE"),
            Some((id, "remove")) if method == Method::POST => {
                return cluster::remove(state, id).await
            }
            Some((_, "remove")) => return not_allowed(&method, &path, "POST"),
            Some(_) => {}
        }
    }
    error(StatusCode::NOT_FOUND, format!("no such resource: {path}"))
}

/// The process is up and serving (readiness comes with the cluster state).
fn healthz(state: &AdminState) -> Reply {
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "node_id": state.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": state.started.elapsed().as_secs(),
        }),
    )
}

/// `GET /v1/calls`: the calls in progress (cluster-wide in a cluster), oldest first.
fn calls(data: &Data) -> Reply {
    match data.read(crate::store::calls) {
        Ok(mut all) => {
            all.sort_by(|a, b| a.start.cmp(&b.start));
            json(StatusCode::OK, serde_json::json!({ "calls": all }))
        }
        Err(r) => *r,
    }
}

/// The node's counters by name.
fn counters(state: &AdminState) -> Reply {
    let map: serde_json::Map<String, serde_json::Value> = state
        .metrics
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    json(StatusCode::OK, serde_json::Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("answer in time")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn health_counters_and_errors() {
        let metrics = Arc::new(Metrics::default());
        metrics.inc(&metrics.registrations_ok);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let state = Arc::new(AdminState {
            node_id: 7,
            metrics,
            started: Instant::now(),
            enroller: None,
            relay: None,
            data: Data::Local {
                store,
                feed: tokio::sync::mpsc::unbounded_channel().0,
            },
        });
        let addr = start("127.0.0.1:0".parse().unwrap(), state).await.unwrap();

        let r = get(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("application/json"));
        assert!(
            r.contains("\"status\":\"ok\"") && r.contains("\"node_id\":7"),
            "{r}"
        );

        let r = get(
            addr,
            "GET /v1/counters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.contains("\"registrations_ok\":1"), "{r}");

        let r = get(
            addr,
            "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 404") && r.contains("no such resource: /nope"),
            "{r}"
        );

        let r = get(
            addr,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 405") && r.to_lowercase().contains("allow: get"),
            "{r}"
        );

        let r = get(addr, "garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }

    fn request(method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn extensions_round_trip_with_versions_and_named_fields() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let (feed, mut applied) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(AdminState {
            node_id: 1,
            metrics: Arc::default(),
            started: Instant::now(),
            enroller: None,
            relay: None,
            data: Data::Local { store, feed },
        });
        let addr = start("127.0.0.1:0".parse().unwrap(), state).await.unwrap();
        let call = |m: &str, p: &str, b: &str| {
            let req = request(m, p, b);
            async move { get(addr, &req).await }
        };

        let r = call(
            "POST",
            "/v1/extensions",
            r#"{"number":"3001","password":"pw3001","name":"Dan"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 201") && r.contains("\"version\":1"),
            "{r}"
        );
        assert!(
            matches!(applied.try_recv(), Ok(crate::cluster::Applied::Change(_))),
            "the SIP core hears of the new extension"
        );
        let r = call(
            "POST",
            "/v1/extensions",
            r#"{"number":"3001","password":"pw3001"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 409") && r.contains("exists already"),
            "{r}"
        );
        let r = call(
            "POST",
            "/v1/extensions",
            r#"{"number":"3x","password":"pw3001"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"number\""),
            "{r}"
        );
        let r = call("POST", "/v1/extensions", r#"{"number":"3002"}"#).await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("password"),
            "{r}"
        );
        let r = call("POST", "/v1/extensions", "{not json").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");

        let r = call("GET", "/v1/extensions/3001", "").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("Dan"), "{r}");
        assert!(
            !r.contains("pw3001"),
            "the password is never sent back: {r}"
        );
        let r = call("PATCH", "/v1/extensions/3001", r#"{"name":"Dana"}"#).await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"version\""),
            "{r}"
        );
        let r = call(
            "PATCH",
            "/v1/extensions/3001",
            r#"{"version":1,"name":"Dana"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"version\":2"),
            "{r}"
        );
        let r = call(
            "PATCH",
            "/v1/extensions/3001",
            r#"{"version":1,"name":"Stale"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 409") && r.contains("version 2"),
            "{r}"
        );
        let r = call(
            "PATCH",
            "/v1/extensions/3001",
            r#"{"version":2,"max_contacts":0}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("max_contacts"),
            "{r}"
        );
        let r = call("GET", "/v1/extensions", "").await;
        assert!(r.contains("Dana") && !r.contains("Stale"), "{r}");

        let r = call("DELETE", "/v1/extensions/3001?version=1", "").await;
        assert!(r.starts_with("HTTP/1.1 409"), "{r}");
        let r = call("DELETE", "/v1/extensions/3001", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = call("GET", "/v1/extensions/3001", "").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = call("PUT", "/v1/extensions/3001", "").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = call("GET", "/v1/calls", "").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"calls\":[]"),
            "{r}"
        );
    }
}
