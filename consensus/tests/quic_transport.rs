//! The QUIC transport over real sockets on 127.0.0.1: mutual TLS from the cluster CA,
//! anonymous enrollment, limits, timeouts, reconnection and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::net::{
    ClientOptions, ClusterCa, NodeIdentity, NodeKey, QuicClient, QuicServer, ServerOptions,
};
use consensus::rpc::{PeerIdentity, RpcClient, RpcError, RpcHandler, RpcKind};
use tokio::sync::Notify;

const ALL_KINDS: [RpcKind; 6] = [
    RpcKind::AppendEntries,
    RpcKind::Vote,
    RpcKind::InstallSnapshot,
    RpcKind::ClientWrite,
    RpcKind::Join,
    RpcKind::Admin,
];

/// No test may hang: every one runs under this bound.
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test did not finish in time")
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Echoes payloads and records who called; `fail` makes it fail, `hold` makes it wait
/// for the gate, and with a CA it answers Join by signing the CSR in the payload.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<(PeerIdentity, RpcKind, usize)>>>,
    ca: Option<Arc<ClusterCa>>,
    entered: Arc<Notify>,
    gate: Arc<Notify>,
}

impl Recorder {
    fn calls(&self) -> Vec<(PeerIdentity, RpcKind, usize)> {
        self.calls.lock().unwrap().clone()
    }
}

impl RpcHandler for Recorder {
    async fn handle(
        &self,
        peer: PeerIdentity,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        self.calls.lock().unwrap().push((peer, kind, payload.len()));
        match payload.as_slice() {
            b"fail" => return Err("boom".into()),
            b"hold" => {
                self.entered.notify_one();
                self.gate.notified().await;
            }
            _ => {}
        }
        if let (RpcKind::Join, Some(ca)) = (kind, &self.ca) {
            return ca
                .sign_csr(&payload, 7)
                .map(String::into_bytes)
                .map_err(|e| e.to_string());
        }
        Ok(payload)
    }
}

struct Cluster {
    ca: Arc<ClusterCa>,
    server: QuicServer,
    handler: Recorder,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(ServerOptions::default(), false)
    }

    fn start_with(options: ServerOptions, enrolls: bool) -> Cluster {
        let ca = Arc::new(ClusterCa::generate("test").unwrap());
        let identity = ca.issue(1, &["127.0.0.1".into()]).unwrap();
        let handler = Recorder {
            ca: enrolls.then(|| ca.clone()),
            ..Recorder::default()
        };
        let server = QuicServer::bind_with(
            localhost(),
            &identity,
            ca.cert_pem(),
            handler.clone(),
            options,
        )
        .unwrap();
        Cluster {
            ca,
            server,
            handler,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn member(&self, node_id: u64) -> QuicClient {
        let identity = self.ca.issue(node_id, &[]).unwrap();
        QuicClient::new(Some(&identity), self.ca.cert_pem()).unwrap()
    }
}

#[tokio::test]
async fn every_kind_round_trips_between_members() {
    bounded(async {
        let cluster = Cluster::start();
        let client = cluster.member(2);
        for kind in ALL_KINDS {
            let payload = format!("{kind:?} payload").into_bytes();
            let answer = client
                .call(cluster.addr(), kind, payload.clone())
                .await
                .unwrap();
            assert_eq!(answer, payload);
        }
        let calls = cluster.handler.calls();
        assert_eq!(calls.len(), ALL_KINDS.len());
        for ((peer, kind, _), expected) in calls.iter().zip(ALL_KINDS) {
            assert_eq!(*peer, PeerIdentity::Node(2));
            assert_eq!(*kind, expected);
        }
        // An empty payload is a valid request too.
        assert_eq!(
            client
                .call(cluster.addr(), RpcKind::Vote, Vec::new())
                .await
                .unwrap(),
            Vec::<u8>::new()
        );
        cluster.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn handler_error_comes_back_as_remote() {
    bounded(async {
        let cluster = Cluster::start();
        let client = cluster.member(2);
        let err = client
            .call(cluster.addr(), RpcKind::ClientWrite, b"fail".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RpcError::Remote { reason, .. } if reason == "boom"),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls() {
    bounded(async {
        let cluster = Cluster::start();
        let client = Arc::new(cluster.member(2));
        let mut calls = tokio::task::JoinSet::new();
        // More than the server's per-connection stream limit, so some calls wait for credit.
        for i in 0..300u32 {
            let client = client.clone();
            let addr = cluster.addr();
            calls.spawn(async move {
                let payload = i.to_be_bytes().repeat(100);
                let answer = client
                    .call(addr, RpcKind::AppendEntries, payload.clone())
                    .await;
                (payload, answer)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (payload, answer) = joined.unwrap();
            assert_eq!(answer.unwrap(), payload);
        }
        assert_eq!(cluster.handler.calls().len(), 300);
    })
    .await;
}

#[tokio::test]
async fn eight_mib_payload_round_trips() {
    bounded(async {
        let cluster = Cluster::start();
        let client = cluster.member(2);
        let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let answer = client
            .call(cluster.addr(), RpcKind::InstallSnapshot, payload.clone())
            .await
            .unwrap();
        assert!(answer == payload, "8 MiB answer differs from the request");
    })
    .await;
}

#[tokio::test]
async fn payload_above_the_server_limit_is_refused() {
    bounded(async {
        let options = ServerOptions {
            max_payload: 1024 * 1024,
            ..ServerOptions::default()
        };
        let cluster = Cluster::start_with(options, false);
        let client = cluster.member(2);
        let err = client
            .call(
                cluster.addr(),
                RpcKind::InstallSnapshot,
                vec![0u8; 3 * 1024 * 1024],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Refused { .. }), "{err:?}");
        assert!(cluster.handler.calls().is_empty());
        // The refusal costs the stream, not the connection.
        let answer = client
            .call(cluster.addr(), RpcKind::Vote, b"after".to_vec())
            .await
            .unwrap();
        assert_eq!(answer, b"after");
    })
    .await;
}

#[tokio::test]
async fn payload_above_the_client_limit_is_refused_before_sending() {
    bounded(async {
        let cluster = Cluster::start();
        let identity = cluster.ca.issue(2, &[]).unwrap();
        let options = ClientOptions {
            max_payload: 1000,
            ..ClientOptions::default()
        };
        let client =
            QuicClient::with_options(Some(&identity), cluster.ca.cert_pem(), options).unwrap();
        let err = client
            .call(cluster.addr(), RpcKind::AppendEntries, vec![0u8; 1001])
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Refused { .. }), "{err:?}");
        assert!(cluster.handler.calls().is_empty());
    })
    .await;
}

#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_rejected() {
    bounded(async {
        let cluster = Cluster::start();
        let rogue_ca = ClusterCa::generate("rogue").unwrap();
        let rogue = rogue_ca.issue(2, &[]).unwrap();
        // It trusts the real CA, so only its own certificate can make the handshake fail.
        let client = QuicClient::new(Some(&rogue), cluster.ca.cert_pem()).unwrap();
        for kind in [RpcKind::AppendEntries, RpcKind::Join] {
            let err = client
                .call(cluster.addr(), kind, b"x".to_vec())
                .await
                .unwrap_err();
            assert!(
                matches!(err, RpcError::Unreachable { .. } | RpcError::Refused { .. }),
                "{err:?}"
            );
        }
        assert!(cluster.handler.calls().is_empty());
    })
    .await;
}

#[tokio::test]
async fn anonymous_client_may_only_join() {
    bounded(async {
        let cluster = Cluster::start();
        let client = QuicClient::new(None, cluster.ca.cert_pem()).unwrap();
        let answer = client
            .call(cluster.addr(), RpcKind::Join, b"token".to_vec())
            .await
            .unwrap();
        assert_eq!(answer, b"token");
        for kind in ALL_KINDS.into_iter().filter(|k| *k != RpcKind::Join) {
            let err = client
                .call(cluster.addr(), kind, b"x".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(err, RpcError::Refused { .. }), "{kind:?}: {err:?}");
        }
        // Anonymous requests are small: a large Join is refused unread.
        let err = client
            .call(cluster.addr(), RpcKind::Join, vec![0u8; 1024 * 1024])
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Refused { .. }), "{err:?}");
        assert_eq!(
            cluster.handler.calls(),
            vec![(PeerIdentity::Anonymous, RpcKind::Join, 5)]
        );
    })
    .await;
}

#[tokio::test]
async fn server_with_a_certificate_from_another_ca_is_refused() {
    bounded(async {
        let ca = ClusterCa::generate("test").unwrap();
        let rogue_ca = ClusterCa::generate("rogue").unwrap();
        let rogue_identity = rogue_ca.issue(1, &["127.0.0.1".into()]).unwrap();
        let handler = Recorder::default();
        let server = QuicServer::bind(
            localhost(),
            &rogue_identity,
            rogue_ca.cert_pem(),
            handler.clone(),
        )
        .unwrap();
        for identity in [Some(ca.issue(2, &[]).unwrap()), None] {
            let client = QuicClient::new(identity.as_ref(), ca.cert_pem()).unwrap();
            let err = client
                .call(server.local_addr(), RpcKind::Join, b"x".to_vec())
                .await
                .unwrap_err();
            assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
        }
        assert!(handler.calls().is_empty());
    })
    .await;
}

#[tokio::test]
async fn enrolled_node_makes_authenticated_calls() {
    bounded(async {
        let cluster = Cluster::start_with(ServerOptions::default(), true);
        // The joining node keeps its key and sends only the CSR, anonymously.
        let key = NodeKey::generate().unwrap();
        let anonymous = QuicClient::new(None, cluster.ca.cert_pem()).unwrap();
        let cert = anonymous
            .call(cluster.addr(), RpcKind::Join, key.csr_der().to_vec())
            .await
            .unwrap();
        let identity = key
            .into_identity(std::str::from_utf8(&cert).unwrap())
            .unwrap();
        assert_eq!(identity.node_id(), 7);

        // Saved and loaded back, as a restarted node would.
        let dir = tempfile::tempdir().unwrap();
        identity.save(dir.path()).unwrap();
        let identity = NodeIdentity::load(dir.path()).unwrap();

        let member = QuicClient::new(Some(&identity), cluster.ca.cert_pem()).unwrap();
        let answer = member
            .call(cluster.addr(), RpcKind::AppendEntries, b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(answer, b"hello");
        assert_eq!(
            cluster.handler.calls().last().copied(),
            Some((PeerIdentity::Node(7), RpcKind::AppendEntries, 5))
        );
    })
    .await;
}

#[tokio::test]
async fn call_to_a_silent_address_fails_within_the_timeout() {
    bounded(async {
        let ca = ClusterCa::generate("test").unwrap();
        let identity = ca.issue(2, &[]).unwrap();
        // A bound UDP socket that never answers: the handshake gets no reply at all.
        let silent = tokio::net::UdpSocket::bind(localhost()).await.unwrap();
        let options = ClientOptions {
            connect_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let client = QuicClient::with_options(Some(&identity), ca.cert_pem(), options).unwrap();
        let started = tokio::time::Instant::now();
        let err = client
            .call(
                silent.local_addr().unwrap(),
                RpcKind::Vote,
                b"anyone?".to_vec(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, RpcError::Unreachable { .. } | RpcError::Timeout { .. }),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn client_reconnects_to_a_restarted_server() {
    bounded(async {
        let cluster = Cluster::start();
        let addr = cluster.addr();
        let client = cluster.member(2);
        client
            .call(addr, RpcKind::Vote, b"one".to_vec())
            .await
            .unwrap();

        let identity = cluster.ca.issue(1, &[]).unwrap();
        cluster.server.shutdown().await;
        let handler = Recorder::default();
        // quinn's endpoint driver releases the socket on its next turn after the last
        // handle is gone; there is nothing to await, so yield until the port is free.
        let mut server = None;
        for _ in 0..1000 {
            match QuicServer::bind(addr, &identity, cluster.ca.cert_pem(), handler.clone()) {
                Ok(s) => {
                    server = Some(s);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let server = server.expect("port not released after shutdown");

        // The old connection's close may still be on its way; a call that races it fails
        // without being retried (it might have been delivered), so the caller retries.
        let mut answer = None;
        for _ in 0..3 {
            if let Ok(a) = client.call(addr, RpcKind::Vote, b"two".to_vec()).await {
                answer = Some(a);
                break;
            }
        }
        assert_eq!(answer.as_deref(), Some(&b"two"[..]));
        assert_eq!(
            handler.calls(),
            vec![(PeerIdentity::Node(2), RpcKind::Vote, 3)]
        );
        server.shutdown().await;
        client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_call_in_progress_finish() {
    bounded(async {
        let cluster = Cluster::start();
        let addr = cluster.addr();
        let client = Arc::new(cluster.member(2));
        let call = {
            let client = client.clone();
            tokio::spawn(async move { client.call(addr, RpcKind::Admin, b"hold".to_vec()).await })
        };
        cluster.handler.entered.notified().await;
        let shutdown = tokio::spawn(cluster.server.shutdown());
        cluster.handler.gate.notify_one();
        assert_eq!(call.await.unwrap().unwrap(), b"hold");
        shutdown.await.unwrap();
        let err = client
            .call(addr, RpcKind::Admin, b"late".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn anonymous_connections_are_limited() {
    bounded(async {
        let options = ServerOptions {
            max_anonymous_connections: 1,
            ..ServerOptions::default()
        };
        let cluster = Cluster::start_with(options, false);
        let first = QuicClient::new(None, cluster.ca.cert_pem()).unwrap();
        let second = QuicClient::new(None, cluster.ca.cert_pem()).unwrap();
        first
            .call(cluster.addr(), RpcKind::Join, b"a".to_vec())
            .await
            .unwrap();
        let err = second
            .call(cluster.addr(), RpcKind::Join, b"b".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
        // Members are not counted against the anonymous limit.
        let member = cluster.member(2);
        member
            .call(cluster.addr(), RpcKind::Vote, b"c".to_vec())
            .await
            .unwrap();
        assert_eq!(cluster.handler.calls().len(), 2);
    })
    .await;
}

/// A UDP relay between a client and a server: `to` names where datagrams go, `None`
/// swallows them (a host that died without a word).
async fn udp_relay(to: Arc<Mutex<Option<SocketAddr>>>) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind(localhost()).await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind(localhost()).await.unwrap());
    let addr = front.local_addr().unwrap();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c, t) = (front.clone(), back.clone(), client.clone(), to.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let target = *t.lock().unwrap();
            if let Some(target) = target {
                let _ = b.send_to(&buf[..n], target).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let (target, client) = (*to.lock().unwrap(), *client.lock().unwrap());
            if let (Some(_), Some(client)) = (target, client) {
                let _ = front.send_to(&buf[..n], client).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_that_died_without_a_word_is_reconnected_once_it_stops_answering() {
    bounded(async {
        let first = Cluster::start();
        let to = Arc::new(Mutex::new(Some(first.addr())));
        let relay = udp_relay(to.clone()).await;
        let client = first.member(2);
        let quick = |payload: &'static [u8]| {
            // Raft's own timeout on a vote or heartbeat cancels the call like this.
            tokio::time::timeout(
                Duration::from_millis(150),
                client.call(relay, RpcKind::Vote, payload.to_vec()),
            )
        };
        assert_eq!(quick(b"one").await.unwrap().unwrap(), b"one");

        // The peer dies without closing its connection, and a new process starts at
        // its address: it holds no keys for the old connection and cannot reset it.
        *to.lock().unwrap() = None;
        let identity = first.ca.issue(1, &[]).unwrap();
        let handler = Recorder::default();
        let second =
            QuicServer::bind(localhost(), &identity, first.ca.cert_pem(), handler.clone()).unwrap();
        assert!(
            quick(b"lost").await.is_err(),
            "the dead peer answers nothing"
        );
        *to.lock().unwrap() = Some(second.local_addr());

        // Calls fail until the connection has been silent for `unresponsive_after`
        // (1 s, well under the 10 s idle timeout); then the next one reconnects.
        let started = std::time::Instant::now();
        let mut answer = None;
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Ok(a)) = quick(b"two").await {
                answer = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            answer.as_deref(),
            Some(&b"two"[..]),
            "reconnected to the new process"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "not before the connection went unanswered: {:?}",
            started.elapsed()
        );
        second.shutdown().await;
        client.shutdown().await;
    })
    .await;
}
