//! The calling side: one cached connection per peer, one stream per request.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt, WriteError};

use super::{
    ca_roots, clamp_limit, crypto_provider, transport_config, NetError, ALPN, DEFAULT_MAX_PAYLOAD,
    SHUTDOWN_CODE,
};
use crate::net::frame::{read_header, read_payload, write_frame, ReadFrameError, Status};
use crate::net::tls::{NodeIdentity, NODE_SERVER_NAME};
use crate::rpc::{RpcClient, RpcError, RpcKind};

/// Limits and timers of a [`QuicClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time allowed to set up a connection (handshake included).
    pub connect_timeout: Duration,
    /// Time allowed for one request, from opening its stream to the whole answer.
    pub call_timeout: Duration,
    /// Largest request sent and answer accepted.
    pub max_payload: usize,
    /// Peers with a cached connection; closed ones are evicted when it is reached.
    pub max_peers: usize,
    /// A connection silent for this long is considered dead.
    pub idle_timeout: Duration,
    /// Calls that waited this long with no answer from the peer make the next call
    /// reconnect (the peer may have restarted behind the connection).
    pub unresponsive_after: Duration,
    /// Keep-alive period, well under the idle timeout, so quiet links stay up.
    pub keep_alive: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_peers: 1024,
            idle_timeout: Duration::from_secs(10),
            unresponsive_after: Duration::from_secs(1),
            keep_alive: Duration::from_secs(2),
        }
    }
}

/// The cached connection to one peer; the async lock makes concurrent first calls share
/// one handshake instead of racing several.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// Since when calls have been made with no answer from the peer.
    unanswered_since: Mutex<Option<Instant>>,
}

impl Slot {
    fn unanswered(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.unanswered_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// True when calls made more than `limit` ago have had no answer at all (whether
    /// they failed, or their callers gave up on them): the peer behind the connection
    /// is gone. A process restarted on the same address cannot reset a connection it
    /// holds no keys for, so without this the connection would swallow every call
    /// (votes, heartbeats) until its idle timeout.
    fn unresponsive(&self, limit: Duration) -> bool {
        self.unanswered().is_some_and(|t| t.elapsed() > limit)
    }

    /// A call is about to be made.
    fn calling(&self) {
        self.unanswered().get_or_insert_with(Instant::now);
    }

    /// The peer answered.
    fn answered(&self) {
        *self.unanswered() = None;
    }

    /// Drops the cached connection, so the next call connects anew.
    async fn evict(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close(VarInt::from_u32(0), b"unresponsive");
        }
        *self.unanswered() = None;
    }
}

/// Lazily bound local sockets, one per address family.
#[derive(Default)]
struct Endpoints {
    v4: Option<Endpoint>,
    v6: Option<Endpoint>,
}

/// Sends RPCs to cluster members over QUIC, with this node's certificate (or none, for
/// enrollment).
pub struct QuicClient {
    config: quinn::ClientConfig,
    options: ClientOptions,
    endpoints: Mutex<Endpoints>,
    peers: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

impl std::fmt::Debug for QuicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl QuicClient {
    /// A client trusting only `ca_cert_pem`, authenticating as `identity` (or anonymous
    /// with `None`), with default options.
    pub fn new(identity: Option<&NodeIdentity>, ca_cert_pem: &str) -> Result<QuicClient, NetError> {
        QuicClient::with_options(identity, ca_cert_pem, ClientOptions::default())
    }

    /// Like [`QuicClient::new`] with explicit limits and timers.
    pub fn with_options(
        identity: Option<&NodeIdentity>,
        ca_cert_pem: &str,
        mut options: ClientOptions,
    ) -> Result<QuicClient, NetError> {
        options.max_payload = clamp_limit(options.max_payload);
        let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(ca_roots(ca_cert_pem)?);
        let mut tls = match identity {
            Some(id) => builder.with_client_auth_cert(id.chain().to_vec(), id.key().clone_key())?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| NetError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(
            options.idle_timeout,
            Some(options.keep_alive),
        )?));
        Ok(QuicClient {
            config,
            options,
            endpoints: Mutex::default(),
            peers: Mutex::default(),
        })
    }

    /// Closes every connection and the local sockets. Calls made afterwards bind anew.
    pub async fn shutdown(&self) {
        let endpoints = {
            let mut guard = self
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            [guard.v4.take(), guard.v6.take()]
        };
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        for endpoint in endpoints.into_iter().flatten() {
            endpoint.close(VarInt::from_u32(SHUTDOWN_CODE), b"shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    fn endpoint_for(&self, addr: SocketAddr) -> Result<Endpoint, RpcError> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (slot, local): (&mut Option<Endpoint>, SocketAddr) = match addr {
            SocketAddr::V4(_) => (&mut endpoints.v4, (Ipv4Addr::UNSPECIFIED, 0).into()),
            SocketAddr::V6(_) => (&mut endpoints.v6, (Ipv6Addr::UNSPECIFIED, 0).into()),
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = Endpoint::client(local).map_err(|e| RpcError::Unreachable {
            addr,
            reason: format!("cannot bind a local socket: {e}"),
        })?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    fn slot_for(&self, addr: SocketAddr) -> Result<Arc<Slot>, RpcError> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = peers.get(&addr) {
            return Ok(slot.clone());
        }
        if peers.len() >= self.options.max_peers {
            // Keeps slots in use (locked) or holding a live connection.
            peers.retain(|_, slot| match slot.conn.try_lock() {
                Ok(conn) => conn.as_ref().is_some_and(|c| c.close_reason().is_none()),
                Err(_) => true,
            });
            if peers.len() >= self.options.max_peers {
                return Err(RpcError::Unreachable {
                    addr,
                    reason: format!("{} peers connected already", peers.len()),
                });
            }
        }
        let slot = Arc::new(Slot::default());
        peers.insert(addr, slot.clone());
        Ok(slot)
    }

    /// The cached live connection to `addr`, or a new one; `true` when it is new.
    async fn connection(&self, addr: SocketAddr) -> Result<(Connection, bool), RpcError> {
        let slot = self.slot_for(addr)?;
        let mut cached = slot.conn.lock().await;
        if let Some(conn) = cached.as_ref() {
            if conn.close_reason().is_none() {
                return Ok((conn.clone(), false));
            }
        }
        *cached = None;
        let connecting = self
            .endpoint_for(addr)?
            .connect_with(self.config.clone(), addr, NODE_SERVER_NAME)
            .map_err(|e| RpcError::Unreachable {
                addr,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(self.options.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(RpcError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(RpcError::Unreachable {
                    addr,
                    reason: format!("no connection within {:?}", self.options.connect_timeout),
                })
            }
        };
        *cached = Some(conn.clone());
        Ok((conn, true))
    }

    /// Opens a stream, reconnecting once if the cached connection turns out to be closed
    /// (nothing was sent on it yet, so the retry cannot duplicate the request).
    async fn open_stream(
        &self,
        addr: SocketAddr,
        conn: Connection,
        fresh: bool,
    ) -> Result<(SendStream, RecvStream), RpcError> {
        match conn.open_bi().await {
            Ok(stream) => Ok(stream),
            Err(e) if fresh => Err(RpcError::Unreachable {
                addr,
                reason: e.to_string(),
            }),
            Err(_) => {
                let (conn, _) = self.connection(addr).await?;
                conn.open_bi().await.map_err(|e| RpcError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })
            }
        }
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        (conn, fresh): (Connection, bool),
        kind: RpcKind,
        payload: &[u8],
    ) -> Result<Vec<u8>, RpcError> {
        let (mut send, mut recv) = self.open_stream(addr, conn, fresh).await?;
        match write_frame(&mut send, kind as u8, payload).await {
            Ok(()) => {
                let _ = send.finish();
            }
            // The server stops reading a request it refuses; its answer says why.
            Err(WriteError::Stopped(_)) => {}
            Err(e) => {
                return Err(RpcError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })
            }
        }
        let lost = |e: ReadFrameError| RpcError::Unreachable {
            addr,
            reason: e.to_string(),
        };
        let (tag, len) = read_header(&mut recv).await.map_err(lost)?;
        let status = Status::from_u8(tag).ok_or_else(|| RpcError::Remote {
            addr,
            reason: format!("malformed answer: status {tag}"),
        })?;
        let body = read_payload(&mut recv, len, self.options.max_payload)
            .await
            .map_err(|e| match e {
                ReadFrameError::TooLarge { .. } => RpcError::Remote {
                    addr,
                    reason: format!("answer refused: {e}"),
                },
                ReadFrameError::Stream(_) => lost(e),
            })?;
        let text = || String::from_utf8_lossy(&body).into_owned();
        match status {
            Status::Ok => Ok(body),
            Status::RemoteError => Err(RpcError::Remote {
                addr,
                reason: text(),
            }),
            Status::Refused => Err(RpcError::Refused {
                addr,
                reason: text(),
            }),
        }
    }
}

impl RpcClient for QuicClient {
    async fn call(
        &self,
        addr: SocketAddr,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RpcError> {
        if payload.len() > self.options.max_payload {
            return Err(RpcError::Refused {
                addr,
                reason: format!(
                    "payload of {} bytes exceeds the local limit of {}",
                    payload.len(),
                    self.options.max_payload
                ),
            });
        }
        let slot = self.slot_for(addr)?;
        if slot.unresponsive(self.options.unresponsive_after) {
            tracing::info!(%addr, "peer unresponsive on its connection: reconnecting");
            slot.evict().await;
        }
        slot.calling();
        let conn = self.connection(addr).await?;
        let exchange = self.exchange(addr, conn, kind, &payload);
        match tokio::time::timeout(self.options.call_timeout, exchange).await {
            Ok(result) => {
                if matches!(
                    result,
                    Ok(_) | Err(RpcError::Remote { .. } | RpcError::Refused { .. })
                ) {
                    slot.answered();
                }
                result
            }
            Err(_) => Err(RpcError::Timeout { addr }),
        }
    }
}
