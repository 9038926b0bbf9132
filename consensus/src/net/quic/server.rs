//! The accepting side: answers requests from peers with an [`RpcHandler`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    ca_roots, clamp_limit, crypto_provider, transport_config, NetError, ALPN, DEFAULT_MAX_PAYLOAD,
    REFUSED_CODE, SHUTDOWN_CODE,
};
use crate::net::frame::{read_header, read_payload, write_frame, ReadFrameError, Status};
use crate::net::tls::{node_id_from_cert, NodeIdentity};
use crate::rpc::{PeerIdentity, RpcHandler, RpcKind};

/// Limits and timers of a [`QuicServer`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request payload from a member; larger ones are refused unread.
    pub max_payload: usize,
    /// Largest request payload from an anonymous peer (enrollment requests are small).
    pub max_anonymous_payload: usize,
    /// Connections open at once; further handshakes are refused.
    pub max_connections: usize,
    /// Of those, connections without a certificate, so enrolling strangers cannot take
    /// every slot from members.
    pub max_anonymous_connections: usize,
    /// Concurrent requests per connection (QUIC stream credit).
    pub max_streams_per_connection: u32,
    /// Time a peer has to deliver a whole request once it opened the stream.
    pub request_timeout: Duration,
    /// A connection silent for this long is dropped.
    pub idle_timeout: Duration,
    /// How long [`QuicServer::shutdown`] lets requests in progress finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_anonymous_payload: 64 * 1024,
            max_connections: 256,
            max_anonymous_connections: 16,
            max_streams_per_connection: 128,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Who is on the other end of a connection, decided once per connection.
#[derive(Debug, Clone)]
enum Caller {
    /// Verified against the CA; serves as [`PeerIdentity`].
    Peer(PeerIdentity),
    /// Chains to the CA but names no node: refused everything.
    Unnamed(String),
}

/// Counts requests in progress so shutdown can wait for them.
#[derive(Clone)]
struct InFlight(Arc<watch::Sender<usize>>);

struct InFlightGuard(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What every connection task shares.
struct Shared<H> {
    handler: H,
    anonymous: AtomicUsize,
    options: ServerOptions,
    in_flight: InFlight,
    shutdown: watch::Receiver<bool>,
}

/// A QUIC endpoint answering RPCs from cluster members (and enrollment from anyone).
pub struct QuicServer {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    in_flight: InFlight,
    accept_task: Option<JoinHandle<()>>,
    grace: Duration,
}

impl std::fmt::Debug for QuicServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicServer {
    /// Binds `addr` (port 0 picks one) with default options and starts serving.
    /// Must be called inside a tokio runtime.
    pub fn bind<H: RpcHandler>(
        addr: SocketAddr,
        identity: &NodeIdentity,
        ca_cert_pem: &str,
        handler: H,
    ) -> Result<QuicServer, NetError> {
        QuicServer::bind_with(
            addr,
            identity,
            ca_cert_pem,
            handler,
            ServerOptions::default(),
        )
    }

    /// Like [`QuicServer::bind`] with explicit limits and timers.
    pub fn bind_with<H: RpcHandler>(
        addr: SocketAddr,
        identity: &NodeIdentity,
        ca_cert_pem: &str,
        handler: H,
        mut options: ServerOptions,
    ) -> Result<QuicServer, NetError> {
        options.max_payload = clamp_limit(options.max_payload);
        options.max_anonymous_payload = clamp_limit(options.max_anonymous_payload);
        let config = server_config(identity, ca_cert_pem, &options)?;
        let endpoint = Endpoint::server(config, addr)?;
        let local_addr = endpoint.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let in_flight = InFlight(Arc::new(watch::channel(0usize).0));
        let grace = options.shutdown_grace;
        let shared = Arc::new(Shared {
            handler,
            anonymous: AtomicUsize::new(0),
            options,
            in_flight: in_flight.clone(),
            shutdown: shutdown_rx,
        });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared));
        tracing::debug!(%local_addr, "QUIC RPC server listening");
        Ok(QuicServer {
            endpoint,
            local_addr,
            shutdown: shutdown_tx,
            in_flight,
            accept_task: Some(accept_task),
            grace,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and requests, lets requests in progress finish (up to
    /// the shutdown grace), then closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
        let mut idle = self.in_flight.0.subscribe();
        if tokio::time::timeout(self.grace, idle.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(local_addr = %self.local_addr, "shutdown grace over with requests in progress");
        }
        self.endpoint
            .close(VarInt::from_u32(SHUTDOWN_CODE), b"shutdown");
        // Gives the CONNECTION_CLOSE frames a chance to leave; peers time out otherwise.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        // Without this, a server dropped without shutdown would keep serving from its task.
        if let Some(task) = self.accept_task.take() {
            task.abort();
            let _ = self.shutdown.send(true);
            self.endpoint
                .close(VarInt::from_u32(SHUTDOWN_CODE), b"dropped");
        }
    }
}

fn server_config(
    identity: &NodeIdentity,
    ca_cert_pem: &str,
    options: &ServerOptions,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ca_roots(ca_cert_pem)?, provider.clone())
            // Anonymous peers may enroll; the RPC layer limits them to Join.
            .allow_unauthenticated()
            .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain().to_vec(), identity.key().clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(options.idle_timeout, None)?;
    transport.max_concurrent_bidi_streams(VarInt::from_u32(options.max_streams_per_connection));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

async fn accept_loop<H: RpcHandler>(endpoint: Endpoint, shared: Arc<Shared<H>>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // open_connections counts handshakes in progress too, so a flood of handshakes
        // is bounded as well as established connections.
        if endpoint.open_connections() >= shared.options.max_connections {
            tracing::warn!(remote = %incoming.remote_address(), "connection limit reached, refusing");
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, shared).await,
                Err(e) => tracing::debug!(%remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

/// Decides who the peer is from the certificate chain the handshake verified.
fn caller_of(conn: &Connection) -> Caller {
    let Some(identity) = conn.peer_identity() else {
        return Caller::Peer(PeerIdentity::Anonymous);
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return Caller::Unnamed("unexpected peer identity type".into());
    };
    let Some(leaf) = chain.first() else {
        return Caller::Peer(PeerIdentity::Anonymous);
    };
    match node_id_from_cert(leaf.as_ref()) {
        Ok(id) => Caller::Peer(PeerIdentity::Node(id)),
        Err(e) => Caller::Unnamed(e.to_string()),
    }
}

async fn serve_connection<H: RpcHandler>(conn: Connection, shared: Arc<Shared<H>>) {
    let caller = caller_of(&conn);
    tracing::debug!(remote = %conn.remote_address(), ?caller, "QUIC connection up");
    let _anonymous_slot = match caller {
        Caller::Peer(PeerIdentity::Anonymous) => match AnonymousSlot::take(&shared) {
            Some(slot) => Some(slot),
            None => {
                tracing::warn!(remote = %conn.remote_address(), "anonymous connection limit reached");
                conn.close(VarInt::from_u32(REFUSED_CODE), b"too many anonymous peers");
                return;
            }
        },
        _ => None,
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(remote = %conn.remote_address(), error = %e, "QUIC connection closed");
                    break;
                }
            },
        };
        let guard = shared.in_flight.enter();
        let shared = shared.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            serve_stream(caller, send, recv, &shared).await;
            drop(guard);
        });
    }
}

/// One of the limited places for anonymous connections, given back on drop.
struct AnonymousSlot<H>(Arc<Shared<H>>);

impl<H> AnonymousSlot<H> {
    fn take(shared: &Arc<Shared<H>>) -> Option<AnonymousSlot<H>> {
        let limit = shared.options.max_anonymous_connections;
        shared
            .anonymous
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| AnonymousSlot(shared.clone()))
    }
}

impl<H> Drop for AnonymousSlot<H> {
    fn drop(&mut self) {
        self.0.anonymous.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request that passed the transport's checks.
struct Request {
    peer: PeerIdentity,
    kind: RpcKind,
    payload: Vec<u8>,
}

/// Why a request is not handed to the handler.
enum Rejection {
    /// Answer with [`Status::Refused`] and this reason.
    Refuse(String),
    /// The stream broke; nobody to answer.
    Broken(String),
}

async fn serve_stream<H: RpcHandler>(
    caller: Caller,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: &Shared<H>,
) {
    let request = match tokio::time::timeout(
        shared.options.request_timeout,
        read_request(&caller, &mut recv, &shared.options),
    )
    .await
    {
        Ok(request) => request,
        Err(_) => Err(Rejection::Broken("request not delivered in time".into())),
    };
    let (status, body) = match request {
        Ok(Request {
            peer,
            kind,
            payload,
        }) => match shared.handler.handle(peer, kind, payload).await {
            Ok(answer) if answer.len() <= shared.options.max_payload => (Status::Ok, answer),
            Ok(answer) => (
                Status::RemoteError,
                format!("answer of {} bytes exceeds the limit", answer.len()).into_bytes(),
            ),
            Err(message) => (Status::RemoteError, message.into_bytes()),
        },
        Err(Rejection::Refuse(reason)) => {
            tracing::debug!(?caller, %reason, "request refused");
            // Tells the client to stop sending the rest of a payload we will not read.
            let _ = recv.stop(VarInt::from_u32(REFUSED_CODE));
            (Status::Refused, reason.into_bytes())
        }
        Err(Rejection::Broken(reason)) => {
            tracing::debug!(?caller, %reason, "request stream broken");
            let _ = recv.stop(VarInt::from_u32(REFUSED_CODE));
            let _ = send.reset(VarInt::from_u32(REFUSED_CODE));
            return;
        }
    };
    if let Err(e) = write_frame(&mut send, status as u8, &body).await {
        tracing::debug!(?caller, error = %e, "answer not delivered");
        return;
    }
    let _ = send.finish();
    // Counted as in flight until the peer acknowledged the answer, so a graceful
    // shutdown does not cut it off; bounded in case the peer vanished.
    let _ = tokio::time::timeout(shared.options.request_timeout, send.stopped()).await;
}

async fn read_request(
    caller: &Caller,
    recv: &mut RecvStream,
    options: &ServerOptions,
) -> Result<Request, Rejection> {
    let (tag, len) = read_header(recv)
        .await
        .map_err(|e| Rejection::Broken(e.to_string()))?;
    let kind =
        RpcKind::from_u8(tag).ok_or_else(|| Rejection::Refuse(format!("unknown kind {tag}")))?;
    // Identity is checked before reading the payload so an unauthorised peer cannot make
    // us buffer anything.
    let (peer, limit) = match caller {
        Caller::Unnamed(why) => {
            return Err(Rejection::Refuse(format!(
                "certificate names no cluster node: {why}"
            )))
        }
        Caller::Peer(PeerIdentity::Anonymous) if kind != RpcKind::Join => {
            return Err(Rejection::Refuse(format!(
                "{kind:?} requires a cluster certificate"
            )))
        }
        Caller::Peer(PeerIdentity::Anonymous) => {
            (PeerIdentity::Anonymous, options.max_anonymous_payload)
        }
        Caller::Peer(peer) => (*peer, options.max_payload),
    };
    let payload = read_payload(recv, len, limit).await.map_err(|e| match e {
        ReadFrameError::TooLarge { .. } => Rejection::Refuse(e.to_string()),
        ReadFrameError::Stream(reason) => Rejection::Broken(reason),
    })?;
    Ok(Request {
        peer,
        kind,
        payload,
    })
}
