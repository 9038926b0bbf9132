//! The admin HTTP listener (hyper, HTTP/1.1, JSON): what `switchctl` and operators'
//! tools talk to. It answers `/healthz`, `/readyz`, the node's counters, Prometheus'
//! `/metrics` (see [`prometheus`]) and the cluster operations (`/v1/cluster...`, see
//! [`cluster`]).

mod audit;
mod auth;
mod backup;
mod body;
mod calls;
mod cdrs;
mod cluster;
mod data;
mod extensions;
mod pbx;
pub mod prometheus;
mod query;
mod registrations;
mod reply;
mod routes;
mod tokens;

pub use data::Data;

use crate::cluster::ReplicatedState;
use crate::metrics::Metrics;
pub use auth::{hash as hash_token, new_token};
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
    /// The SIP core, for what only it can do (hang a call up); `None` in tests.
    pub core: Option<tokio::sync::mpsc::Sender<crate::core::AdminRequest>>,
    /// The virtual IP(s) the cluster's leader holds (`[vip]`), for `/v1/cluster`.
    pub vip: Vec<String>,
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
        let (stream, remote) = match listener.accept().await {
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
                async move { Ok::<_, std::convert::Infallible>(route(state, req, remote).await) }
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

async fn route(state: Arc<AdminState>, req: Request<Incoming>, remote: SocketAddr) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let get_only = |handler: fn(&AdminState) -> Reply| {
        if method == Method::GET {
            handler(&state)
        } else {
            not_allowed(&method, &path, "GET")
        }
    };
    // Public (no token, `auth::PUBLIC`): probes and scrapers.
    match path.as_str() {
        "/healthz" => return get_only(healthz),
        "/readyz" => return get_only(cluster::ready),
        "/metrics" => return get_only(prometheus::metrics),
        _ => {}
    }
    if auth::PUBLIC.contains(&path.as_str()) {
        // Public, but not served by this build.
        return error(StatusCode::NOT_FOUND, format!("no such resource: {path}"));
    }
    let caller = match auth::authenticate(&state.data, req.headers()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let query = req.uri().query().map(str::to_owned);
    let body = match body::collect(req.into_body(), body::limit(&path)).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let needed = auth::needed(&method, &path);
    let reply = if caller.role < needed {
        auth::forbidden(&caller, needed)
    } else {
        let call = routes::Call {
            caller: &caller,
            method: &method,
            path: &path,
            query: query.as_deref(),
            body: &body,
        };
        routes::dispatch(&state, call).await
    };
    // Changes are logged, and so is taking a backup: it holds every password.
    if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || path == "/v1/backup" {
        let change = audit::Change {
            caller: &caller,
            method: &method,
            target: &target,
            remote,
            body: &body,
        };
        audit::record(&state.data, change, reply.status()).await;
    }
    reply
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A standalone node's admin API with an admin token; answers (address, token,
    /// the SIP core's feed).
    async fn serve_local(
        metrics: Arc<Metrics>,
    ) -> (
        SocketAddr,
        String,
        tokio::sync::mpsc::UnboundedReceiver<crate::cluster::Applied>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let (token, hash) = new_token();
        store
            .apply(&crate::store::Command::PutApiToken {
                name: "admin".into(),
                role: crate::store::Role::Admin,
                hash,
                created: "2026-01-01T00:00:00.000Z".into(),
            })
            .unwrap();
        let (feed, applied) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(AdminState {
            node_id: 7,
            metrics,
            started: Instant::now(),
            enroller: None,
            relay: None,
            data: Data::Local { store, feed },
            core: None,
            vip: Vec::new(),
        });
        let addr = start("127.0.0.1:0".parse().unwrap(), state).await.unwrap();
        (addr, token, applied, dir)
    }

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
        let (addr, token, _applied, _dir) = serve_local(metrics).await;

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
        assert!(
            r.starts_with("HTTP/1.1 401") && r.to_lowercase().contains("www-authenticate: bearer"),
            "a token is required: {r}"
        );
        let r = get(
            addr,
            "GET /v1/counters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 401") && r.contains("unknown"),
            "{r}"
        );
        let r = get(
            addr,
            &format!("GET /v1/counters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.contains("\"registrations_ok\":1"), "{r}");

        let r = get(
            addr,
            &format!("GET /nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
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

    fn request(token: &str, method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn extensions_round_trip_with_versions_and_named_fields() {
        let (addr, token, mut applied, _dir) = serve_local(Arc::default()).await;
        let call = |m: &str, p: &str, b: &str| {
            let req = request(&token, m, p, b);
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
        // Filters and paging.
        let r = call("GET", "/v1/extensions?name=dAnA&prefix=30", "").await;
        let v = body(&r);
        assert_eq!(v["total"], 1, "{r}");
        assert_eq!(v["extensions"][0]["name"], "Dana", "{r}");
        let r = call("GET", "/v1/extensions?prefix=99", "").await;
        assert_eq!(body(&r)["total"], 0, "{r}");
        let r = call("GET", "/v1/extensions?limit=1&offset=1", "").await;
        let v = body(&r);
        assert_eq!(v["total"], 1, "{r}");
        assert_eq!(v["extensions"].as_array().map(Vec::len), Some(0), "{r}");
        let r = call("GET", "/v1/extensions?prefix=3a", "").await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"prefix\""),
            "{r}"
        );

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

    /// The JSON body of an answer.
    fn body(r: &str) -> serde_json::Value {
        let b = r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(b).unwrap_or(serde_json::Value::Null)
    }

    #[tokio::test]
    async fn tokens_roles_and_audit() {
        let (addr, admin, _applied, _dir) = serve_local(Arc::default()).await;
        let call = |t: &str, m: &str, p: &str, b: &str| {
            let req = request(t, m, p, b);
            async move { get(addr, &req).await }
        };
        let r = call(
            &admin,
            "POST",
            "/v1/tokens",
            r#"{"name":"viewer","role":"read-only"}"#,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 201"), "{r}");
        let viewer = body(&r)["token"].as_str().unwrap().to_string();
        let r = call(
            &admin,
            "POST",
            "/v1/tokens",
            r#"{"name":"ops","role":"operator"}"#,
        )
        .await;
        let ops = body(&r)["token"].as_str().unwrap().to_string();
        let r = call(
            &admin,
            "POST",
            "/v1/tokens",
            r#"{"name":"ops","role":"operator"}"#,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 409"), "{r}");
        let r = call(
            &admin,
            "POST",
            "/v1/tokens",
            r#"{"name":"x","role":"boss"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"role\""),
            "{r}"
        );
        let r = call(
            &admin,
            "POST",
            "/v1/tokens",
            r#"{"name":"a b","role":"admin"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"name\""),
            "{r}"
        );
        let r = call(&admin, "POST", "/v1/tokens", r#"{"name":"#).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");

        // read-only reads, and is refused changes and admin resources.
        let r = call(&viewer, "GET", "/v1/extensions", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = call(
            &viewer,
            "POST",
            "/v1/extensions",
            r#"{"number":"4001","password":"pw4001"}"#,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("operator"),
            "{r}"
        );
        let r = call(&viewer, "GET", "/v1/tokens", "").await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        // operator edits extensions but manages neither tokens nor the cluster.
        let r = call(
            &ops,
            "POST",
            "/v1/extensions",
            r#"{"number":"4001","password":"pw4001"}"#,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 201"), "{r}");
        let r = call(
            &ops,
            "POST",
            "/v1/tokens",
            r#"{"name":"mine","role":"admin"}"#,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let r = call(&ops, "POST", "/v1/cluster/tokens", "").await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let r = call(&ops, "GET", "/v1/audit", "").await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");

        let r = call(&admin, "GET", "/v1/tokens?limit=2", "").await;
        let v = body(&r);
        assert_eq!(v["total"], 3, "{r}");
        assert_eq!(v["tokens"].as_array().map(Vec::len), Some(2), "{r}");
        assert!(
            !r.contains(&viewer) && !r.contains("hash"),
            "never the token or its hash: {r}"
        );
        let r = call(&admin, "GET", "/v1/tokens?limit=0", "").await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"limit\""),
            "{r}"
        );

        // Every change is audited, refused ones too, secrets masked.
        let r = call(&admin, "GET", "/v1/audit", "").await;
        let entries = body(&r)["entries"].as_array().cloned().unwrap_or_default();
        let seen: Vec<(String, String, u64)> = entries
            .iter()
            .map(|e| {
                (
                    e["token"].as_str().unwrap_or("").to_string(),
                    e["path"].as_str().unwrap_or("").to_string(),
                    e["status"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert!(
            seen.contains(&("viewer".into(), "/v1/extensions".into(), 403)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("ops".into(), "/v1/extensions".into(), 201)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("admin".into(), "/v1/tokens".into(), 409)),
            "{seen:?}"
        );
        assert!(!r.contains("pw4001"), "passwords are masked: {r}");
        assert!(entries.iter().all(|e| e["remote"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1"))));
        let last = entries.last().unwrap()["id"].as_u64().unwrap();
        let r = call(&admin, "GET", &format!("/v1/audit?since={last}"), "").await;
        assert_eq!(body(&r)["entries"].as_array().map(Vec::len), Some(1), "{r}");
        let r = call(&admin, "GET", "/v1/audit?since=yesterday", "").await;
        assert!(
            r.starts_with("HTTP/1.1 400") && r.contains("\"field\":\"since\""),
            "{r}"
        );

        // Revoked: refused at once; the last admin token stays.
        let r = call(&admin, "DELETE", "/v1/tokens/viewer", "").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = call(&viewer, "GET", "/v1/extensions", "").await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = call(&admin, "DELETE", "/v1/tokens/viewer", "").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = call(&admin, "DELETE", "/v1/tokens/admin", "").await;
        assert!(
            r.starts_with("HTTP/1.1 409") && r.contains("last admin"),
            "{r}"
        );
    }
}
