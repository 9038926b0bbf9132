//! The cluster PKI: one self-signed CA per cluster, one certificate per node naming its
//! node id, and enrollment by CSR so a joining node's private key never leaves it.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// DNS name carried by every node certificate. Nodes are dialled by IP address, so the
/// client verifies the server against this fixed name: what matters is the CA signature.
pub const NODE_SERVER_NAME: &str = "softswitch-node";

/// Prefix of the SAN URI that names a node: `urn:softswitch:node:<id>`.
pub const NODE_URI_PREFIX: &str = "urn:softswitch:node:";

/// File names used by [`ClusterCa::save`] and [`NodeIdentity::save`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key file (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The node certificate chain file.
pub const NODE_CERT_FILE: &str = "node.crt";
/// The node private key file (mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// Upper bound on the extra SANs a CSR may ask for, so a CSR cannot bloat a certificate.
const MAX_EXTRA_SANS: usize = 16;
/// Backdating absorbs clock skew between the CA host and the other nodes.
const BACKDATE: Duration = Duration::hours(1);
const CA_VALIDITY: Duration = Duration::days(365 * 20);
const NODE_VALIDITY: Duration = Duration::days(365 * 5);

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate or key generation, signing or CSR parsing failed in rcgen.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM document could not be decoded.
    #[error("bad PEM ({what}): {reason}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A certificate could not be parsed or lacks what a node certificate needs.
    #[error("bad certificate: {0}")]
    Certificate(String),
    /// A caller-supplied subject alternative name is not a valid DNS name or IP address.
    #[error("bad subject alternative name {0:?}")]
    San(String),
    /// The private key does not match the certificate or is of an unsupported type.
    #[error("bad key: {0}")]
    Key(String),
    /// Reading or writing PEM files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The certificate authority of one cluster: it signs every node certificate.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) named after the cluster.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cluster_name} cluster CA"));
        dn.push(DnType::OrganizationName, cluster_name);
        params.distinguished_name = dn;
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let cert_pem = cert.pem();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_der,
            cert_pem,
        })
    }

    /// The CA certificate and private key as PEM documents `(cert, key)`.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem.clone(), self.issuer.key().serialize_pem())
    }

    /// A CA from its PEM certificate and key (as written by [`ClusterCa::to_pem`]).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        let key = KeyPair::from_pem(key_pem)?;
        check_key_matches(std::slice::from_ref(&cert_der), &key.serialize_der())?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(ClusterCa {
            issuer,
            cert_der,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let (cert, key) = self.to_pem();
        write_file(&dir.join(CA_CERT_FILE), cert.as_bytes(), 0o644)?;
        write_file(&dir.join(CA_KEY_FILE), key.as_bytes(), 0o600)
    }

    /// Reads the files written by [`ClusterCa::save`].
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        let cert = read_file(&dir.join(CA_CERT_FILE))?;
        let key = read_file(&dir.join(CA_KEY_FILE))?;
        ClusterCa::from_pem(&cert, &key)
    }

    /// The CA certificate in PEM: what every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate and a fresh key for `node_id`. `extra_sans` are IP addresses
    /// or DNS names the node is also known by.
    pub fn issue(&self, node_id: u64, extra_sans: &[String]) -> Result<NodeIdentity, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let sans = parse_sans(extra_sans)?;
        let cert = node_params(node_id, sans)?.signed_by(&key, &self.issuer)?;
        NodeIdentity::from_parts(&cert.pem(), &key.serialize_pem())
    }

    /// Signs a CSR (DER) for `node_id` and returns the certificate in PEM.
    ///
    /// The CA decides what the certificate says: only the public key (whose possession
    /// the CSR signature proves) and requested DNS/IP names are taken from the request;
    /// a requested node URI, CA flag or key usage is ignored.
    pub fn sign_csr(&self, csr_der: &[u8], node_id: u64) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der,
        ))?;
        let sans: Vec<SanType> = csr
            .params
            .subject_alt_names
            .iter()
            .filter(|san| matches!(san, SanType::DnsName(_) | SanType::IpAddress(_)))
            .filter(|san| !matches!(san, SanType::DnsName(n) if n.as_str() == NODE_SERVER_NAME))
            .cloned()
            .collect();
        if sans.len() > MAX_EXTRA_SANS {
            return Err(TlsError::San(format!(
                "{} names requested, at most {MAX_EXTRA_SANS}",
                sans.len()
            )));
        }
        let cert = node_params(node_id, sans)?.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.pem())
    }

    /// Signs a CSR given in PEM; see [`ClusterCa::sign_csr`].
    pub fn sign_csr_pem(&self, csr_pem: &str, node_id: u64) -> Result<String, TlsError> {
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
                TlsError::Pem {
                    what: "CSR",
                    reason: e.to_string(),
                }
            })?;
        self.sign_csr(der.as_ref(), node_id)
    }
}

/// A node's key pair and certificate request, made on the joining node so that only the
/// CSR travels to the CA.
pub struct NodeKey {
    key: KeyPair,
    csr_der: Vec<u8>,
    csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh ECDSA P-256 key and a CSR without extra names.
    pub fn generate() -> Result<NodeKey, TlsError> {
        NodeKey::generate_with_sans(&[])
    }

    /// A fresh ECDSA P-256 key and a CSR asking for `extra_sans` (IP addresses or DNS
    /// names) besides the names the CA always puts in.
    pub fn generate_with_sans(extra_sans: &[String]) -> Result<NodeKey, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "joining node");
        params.distinguished_name = dn;
        params.subject_alt_names = parse_sans(extra_sans)?;
        let csr = params.serialize_request(&key)?;
        let csr_pem = csr.pem()?;
        Ok(NodeKey {
            csr_der: csr.der().to_vec(),
            csr_pem,
            key,
        })
    }

    /// The CSR in DER, to send to the CA.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// The CSR in PEM.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key in PEM (PKCS#8). Keep it on this node.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The identity made of this key and the certificate the CA returned for its CSR.
    pub fn into_identity(self, cert_pem: &str) -> Result<NodeIdentity, TlsError> {
        NodeIdentity::from_parts(cert_pem, &self.key.serialize_pem())
    }
}

/// What a node presents in the TLS handshake: its certificate chain and private key.
pub struct NodeIdentity {
    node_id: u64,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    // The PEM text is kept as given so saving writes back exactly what was loaded.
    chain_pem: String,
    key_pem: String,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            node_id: self.node_id,
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// An identity from a PEM certificate chain (leaf first) and a PEM private key.
    /// Fails when the leaf names no node or the key does not belong to it.
    pub fn from_parts(cert_pem: &str, key_pem: &str) -> Result<NodeIdentity, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "node certificate",
                reason: e.to_string(),
            })?;
        let leaf = chain.first().ok_or_else(|| TlsError::Pem {
            what: "node certificate",
            reason: "no certificate".into(),
        })?;
        let node_id = node_id_from_cert(leaf.as_ref())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "node key",
            reason: e.to_string(),
        })?;
        check_key_matches(&chain, key.secret_der())?;
        Ok(NodeIdentity {
            node_id,
            chain,
            key,
            chain_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The node id named by the certificate.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The chain and key as PEM documents `(chain, key)`.
    pub fn to_pem(&self) -> (String, String) {
        (self.chain_pem.clone(), self.key_pem.clone())
    }

    /// Writes `node.crt` and `node.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let (chain, key) = self.to_pem();
        write_file(&dir.join(NODE_CERT_FILE), chain.as_bytes(), 0o644)?;
        write_file(&dir.join(NODE_KEY_FILE), key.as_bytes(), 0o600)
    }

    /// Reads the files written by [`NodeIdentity::save`].
    pub fn load(dir: &Path) -> Result<NodeIdentity, TlsError> {
        let chain = read_file(&dir.join(NODE_CERT_FILE))?;
        let key = read_file(&dir.join(NODE_KEY_FILE))?;
        NodeIdentity::from_parts(&chain, &key)
    }
}

/// Writes the CA certificate alone as `ca.crt` into `dir` (a member without the CA key).
pub fn save_ca_cert(dir: &Path, cert_pem: &str) -> Result<(), TlsError> {
    write_file(&dir.join(CA_CERT_FILE), cert_pem.as_bytes(), 0o644)
}

/// Reads the CA certificate (PEM) written by [`save_ca_cert`] or [`ClusterCa::save`].
pub fn load_ca_cert(dir: &Path) -> Result<String, TlsError> {
    read_file(&dir.join(CA_CERT_FILE))
}

/// The node id a certificate (DER) names in its `urn:softswitch:node:<id>` SAN URI.
///
/// This does not verify the certificate: call it only on a chain the TLS layer has
/// already verified against the cluster CA.
pub fn node_id_from_cert(cert_der: &[u8]) -> Result<u64, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .ok_or_else(|| TlsError::Certificate("no subject alternative names".into()))?;
    let mut found = None;
    for name in &san.value.general_names {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) else {
            continue;
        };
        let id = id
            .parse::<u64>()
            .map_err(|_| TlsError::Certificate(format!("bad node URI {uri:?}")))?;
        // Two different ids would make the identity ambiguous.
        if found.is_some_and(|f| f != id) {
            return Err(TlsError::Certificate("several node ids".into()));
        }
        found = Some(id);
    }
    found.ok_or_else(|| TlsError::Certificate("no node URI".into()))
}

/// The SAN URI naming `node_id`.
pub fn node_uri(node_id: u64) -> String {
    format!("{NODE_URI_PREFIX}{node_id}")
}

fn node_params(node_id: u64, extra_sans: Vec<SanType>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("node-{node_id}"));
    params.distinguished_name = dn;
    let uri = node_uri(node_id)
        .try_into()
        .map_err(|_| TlsError::San(node_uri(node_id)))?;
    let dns = NODE_SERVER_NAME
        .try_into()
        .map_err(|_| TlsError::San(NODE_SERVER_NAME.into()))?;
    params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
    params.subject_alt_names.extend(extra_sans);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a server (to its peers) and a client (of its peers).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_VALIDITY);
    Ok(params)
}

fn parse_sans(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    if names.len() > MAX_EXTRA_SANS {
        return Err(TlsError::San(format!(
            "{} names given, at most {MAX_EXTRA_SANS}",
            names.len()
        )));
    }
    names
        .iter()
        .map(|name| match IpAddr::from_str(name) {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::San(name.clone())),
        })
        .collect()
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

/// Fails unless the private key (PKCS#8/SEC1/PKCS#1 DER) belongs to the leaf of `chain`.
fn check_key_matches(chain: &[CertificateDer<'static>], key_der: &[u8]) -> Result<(), TlsError> {
    let key =
        PrivateKeyDer::try_from(key_der.to_vec()).map_err(|e| TlsError::Key(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain.to_vec(), signer);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(e.to_string()))
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temporary file and a rename so a crash never leaves half a key, and
/// creates the file with `mode` so a key is never readable by others, even briefly.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let io_err = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    file.write_all(data).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_names_the_node() {
        let ca = ClusterCa::generate("test").unwrap();
        let id = ca
            .issue(7, &["127.0.0.1".into(), "n7.example".into()])
            .unwrap();
        assert_eq!(id.node_id(), 7);
        assert_eq!(node_id_from_cert(id.chain()[0].as_ref()).unwrap(), 7);
    }

    #[test]
    fn ca_round_trips_through_pem_and_files() {
        let ca = ClusterCa::generate("test").unwrap();
        let (cert, key) = ca.to_pem();
        let again = ClusterCa::from_pem(&cert, &key).unwrap();
        let id = again.issue(3, &[]).unwrap();
        assert_eq!(id.node_id(), 3);

        let dir = tempfile::tempdir().unwrap();
        ca.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn identity_round_trips_through_files() {
        let ca = ClusterCa::generate("test").unwrap();
        let id = ca.issue(9, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        id.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(NODE_KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let loaded = NodeIdentity::load(dir.path()).unwrap();
        assert_eq!(loaded.node_id(), 9);
        assert_eq!(loaded.chain(), id.chain());
    }

    #[test]
    fn csr_enrollment_issues_the_id_the_ca_chose() {
        let ca = ClusterCa::generate("test").unwrap();
        let key = NodeKey::generate_with_sans(&["10.0.0.5".into()]).unwrap();
        let cert = ca.sign_csr_pem(key.csr_pem(), 42).unwrap();
        let id = key.into_identity(&cert).unwrap();
        assert_eq!(id.node_id(), 42);
    }

    #[test]
    fn csr_asking_for_another_node_and_ca_rights_gets_neither() {
        let ca = ClusterCa::generate("test").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(node_uri(1).try_into().unwrap())];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap();
        let cert_pem = ca.sign_csr(csr.der().as_ref(), 5).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        assert_eq!(node_id_from_cert(der.as_ref()).unwrap(), 5);
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(!cert.is_ca());
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let ca = ClusterCa::generate("test").unwrap();
        let a = ca.issue(1, &[]).unwrap();
        let b = ca.issue(2, &[]).unwrap();
        let (cert_a, _) = a.to_pem();
        let (_, key_b) = b.to_pem();
        assert!(matches!(
            NodeIdentity::from_parts(&cert_a, &key_b),
            Err(TlsError::Key(_))
        ));
    }
}
