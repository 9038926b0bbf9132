//! The QUIC transport for [`crate::rpc`]: one bidirectional stream per request, TLS 1.3
//! with certificates from the cluster CA on both sides.
//!
//! The server accepts anonymous clients at the TLS level so a node without a certificate
//! can enroll; the RPC layer then serves them [`RpcKind::Join`](crate::rpc::RpcKind::Join)
//! only. A client presenting a certificate that does not chain to the cluster CA fails
//! the handshake.

mod client;
mod server;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::tls::TlsError;

pub use client::{ClientOptions, QuicClient};
pub use server::{QuicServer, ServerOptions};

/// The ALPN protocol both sides require, so a stray QUIC client of another protocol
/// fails the handshake instead of sending garbage.
pub const ALPN: &[u8] = b"softswitch-raft/1";

/// Default bound on request and response payloads.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// QUIC application error code sent when stopping a stream whose request is refused.
const REFUSED_CODE: u32 = 2;
/// QUIC application error code of a connection closed by shutdown.
const SHUTDOWN_CODE: u32 = 0;

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (e.g. no CA certificate).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the configuration.
    #[error("QUIC configuration: {0}")]
    Quic(String),
    /// The socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding only the cluster CA: nothing else is trusted.
fn ca_roots(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    let mut added = 0usize;
    for cert in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        roots.add(cert)?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsError::Pem {
            what: "CA certificate",
            reason: "no certificate".into(),
        }
        .into());
    }
    Ok(Arc::new(roots))
}

/// QUIC timers shared by both sides: the idle timeout is what finally detects a peer
/// that vanished without closing; keep-alives stop a quiet but healthy link from idling.
fn transport_config(
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
) -> Result<quinn::TransportConfig, NetError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .map_err(|e| NetError::Quic(format!("idle timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(keep_alive);
    Ok(transport)
}

/// A payload limit the u32 length prefix can express.
fn clamp_limit(limit: usize) -> usize {
    limit.min(u32::MAX as usize)
}
