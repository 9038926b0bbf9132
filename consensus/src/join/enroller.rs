//! The issuing side of enrollment: one-time tokens kept as hashes, redeemed by signing
//! the new node's CSR with the cluster CA.

use super::messages::{JoinRequest, JoinResponse};
use super::token::{JoinToken, SECRET_LEN};
use crate::net::{ClusterCa, TlsError};
use crate::status::Status;
use crate::types::NodeId;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

/// Outstanding tokens kept at most: issuing is an operator action, so this is only hit
/// by a runaway script, and it bounds memory.
pub const MAX_OUTSTANDING_TOKENS: usize = 1024;

/// The refusal for any token that does not redeem; one message for all cases, so a
/// prober learns nothing about which tokens exist.
pub const TOKEN_REFUSED: &str =
    "join token unknown, used or expired: ask a member for a new one with `switchctl cluster token`";

/// Why a token was not issued or a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Wrong, reused or expired token.
    #[error("{TOKEN_REFUSED}")]
    TokenRefused,
    /// Too many tokens are outstanding.
    #[error("{MAX_OUTSTANDING_TOKENS} join tokens are outstanding already: use or let some expire before issuing more")]
    TooManyTokens,
    /// The system's random generator failed.
    #[error("no randomness for the token secret: {0}; check the system's entropy source")]
    Random(String),
    /// The CSR could not be signed.
    #[error("the certificate request was not signed: {0}; generate a new key and retry")]
    Csr(#[from] TlsError),
}

/// A token not redeemed yet: only its hash is kept, so a memory dump reveals no token.
struct Outstanding {
    hash: [u8; 32],
    expires: Instant,
}

#[derive(Default)]
struct Pending {
    tokens: Vec<Outstanding>,
    /// Ids handed out that may not be in the membership yet, so two joiners racing never
    /// get the same id.
    reserved: BTreeSet<NodeId>,
}

/// Issues join tokens and enrolls the nodes presenting them; runs on a node holding the
/// CA key.
pub struct Enroller {
    ca: ClusterCa,
    own_id: NodeId,
    raft_addr: SocketAddr,
    status: watch::Receiver<Status>,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("own_id", &self.own_id)
            .field("raft_addr", &self.raft_addr)
            .finish_non_exhaustive()
    }
}

fn hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Enroller {
    /// An enroller signing with `ca`, on node `own_id` reachable at `raft_addr`, that
    /// reads the membership from `status`.
    pub fn new(
        ca: ClusterCa,
        own_id: NodeId,
        raft_addr: SocketAddr,
        status: watch::Receiver<Status>,
    ) -> Enroller {
        Enroller {
            ca,
            own_id,
            raft_addr,
            status,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The state stays consistent under a panic elsewhere (every update is one step).
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new token, redeemable once within `ttl`.
    pub fn issue_token(&self, ttl: Duration) -> Result<JoinToken, EnrollError> {
        let mut secret = [0u8; SECRET_LEN];
        OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| EnrollError::Random(e.to_string()))?;
        let now = Instant::now();
        let mut pending = self.pending();
        pending.tokens.retain(|t| t.expires > now);
        if pending.tokens.len() >= MAX_OUTSTANDING_TOKENS {
            return Err(EnrollError::TooManyTokens);
        }
        pending.tokens.push(Outstanding {
            hash: hash(&secret),
            expires: now + ttl,
        });
        Ok(JoinToken::new(
            self.raft_addr,
            secret,
            self.ca.cert_pem().to_owned(),
        ))
    }

    /// Tokens issued and neither used nor expired.
    pub fn outstanding(&self) -> usize {
        let now = Instant::now();
        self.pending()
            .tokens
            .iter()
            .filter(|t| t.expires > now)
            .count()
    }

    /// Checks the secret (once, unexpired), picks the node id, signs the CSR.
    pub fn redeem(&self, req: &JoinRequest) -> Result<JoinResponse, EnrollError> {
        // A secret of the wrong shape is just an unknown token.
        let presented = hex::decode(&req.secret).map_err(|_| EnrollError::TokenRefused)?;
        let presented = hash(&presented);
        let now = Instant::now();
        let (voters, members) = {
            let s = self.status.borrow();
            (s.voters.clone(), s.members.clone())
        };
        let mut pending = self.pending();
        pending.tokens.retain(|t| t.expires > now);
        // Compares with every token, without stopping at a match, in constant time each.
        let mut found = None;
        for (i, t) in pending.tokens.iter().enumerate() {
            if bool::from(t.hash.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        let index = found.ok_or(EnrollError::TokenRefused)?;
        pending.reserved.retain(|id| !members.contains_key(id));
        let mut taken: BTreeSet<NodeId> = members.keys().copied().collect();
        taken.extend(voters);
        taken.extend(pending.reserved.iter().copied());
        taken.insert(self.own_id);
        let node_id = match req.requested_id {
            Some(id) if !taken.contains(&id) => id,
            _ => taken.last().map_or(1, |max| max + 1),
        };
        // Signed before the token is spent, so a bad CSR does not waste the token.
        let cert_pem = self.ca.sign_csr_pem(&req.csr_pem, node_id)?;
        pending.tokens.swap_remove(index);
        pending.reserved.insert(node_id);
        tracing::info!(node_id, raft_addr = %req.raft_addr, "enrolled a new node");
        Ok(JoinResponse {
            node_id,
            cert_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            ca_key_pem: self.ca.to_pem().1,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NodeKey;
    use crate::status::Role;
    use crate::types::Member;
    use std::collections::BTreeMap;

    fn status(members: &[NodeId]) -> Status {
        Status {
            id: 1,
            role: Role::Leader,
            term: 1,
            leader: Some(1),
            last_log: None,
            committed: None,
            applied: None,
            snapshot: None,
            purged: None,
            voters: members.iter().copied().collect(),
            members: members.iter().map(|id| (*id, Member::default())).collect(),
            matched: BTreeMap::new(),
        }
    }

    fn enroller(members: &[NodeId]) -> (Enroller, watch::Sender<Status>) {
        let (tx, rx) = watch::channel(status(members));
        let ca = ClusterCa::generate("test").unwrap();
        let e = Enroller::new(ca, 1, "127.0.0.1:7001".parse().unwrap(), rx);
        (e, tx)
    }

    fn request(token: &JoinToken, requested_id: Option<NodeId>) -> JoinRequest {
        JoinRequest {
            secret: hex::encode(token.secret()),
            raft_addr: "127.0.0.1:7002".parse().unwrap(),
            admin_addr: "127.0.0.1:8002".into(),
            csr_pem: NodeKey::generate().unwrap().csr_pem().to_owned(),
            requested_id,
        }
    }

    #[test]
    fn a_token_redeems_once() {
        let (e, _tx) = enroller(&[1]);
        let token = e.issue_token(Duration::from_secs(60)).unwrap();
        assert_eq!(e.outstanding(), 1);
        let resp = e.redeem(&request(&token, None)).unwrap();
        assert_eq!(resp.node_id, 2);
        assert_eq!(e.outstanding(), 0);
        let again = e.redeem(&request(&token, None)).unwrap_err();
        assert!(matches!(again, EnrollError::TokenRefused));
        assert!(again.to_string().contains("switchctl cluster token"));
    }

    #[test]
    fn expired_and_forged_tokens_are_refused() {
        let (e, _tx) = enroller(&[1]);
        let expired = e.issue_token(Duration::ZERO).unwrap();
        assert!(matches!(
            e.redeem(&request(&expired, None)),
            Err(EnrollError::TokenRefused)
        ));
        let forged = JoinToken::new(expired.issuer(), [9; 32], expired.ca_pem().into());
        assert!(matches!(
            e.redeem(&request(&forged, None)),
            Err(EnrollError::TokenRefused)
        ));
        let mut bad = request(&forged, None);
        bad.secret = "zz".into();
        assert!(matches!(e.redeem(&bad), Err(EnrollError::TokenRefused)));
    }

    #[test]
    fn ids_are_the_requested_one_if_free_else_next_after_the_highest() {
        let (e, tx) = enroller(&[1, 5]);
        let token = || e.issue_token(Duration::from_secs(60)).unwrap();
        assert_eq!(e.redeem(&request(&token(), Some(3))).unwrap().node_id, 3);
        // 3 is reserved until it shows up in the membership.
        assert_eq!(e.redeem(&request(&token(), Some(3))).unwrap().node_id, 6);
        assert_eq!(e.redeem(&request(&token(), Some(5))).unwrap().node_id, 7);
        tx.send(status(&[1, 3, 5, 6, 7])).unwrap();
        assert_eq!(e.redeem(&request(&token(), None)).unwrap().node_id, 8);
    }

    #[test]
    fn a_bad_csr_does_not_spend_the_token() {
        let (e, _tx) = enroller(&[1]);
        let token = e.issue_token(Duration::from_secs(60)).unwrap();
        let mut bad = request(&token, None);
        bad.csr_pem = "not a csr".into();
        assert!(matches!(e.redeem(&bad), Err(EnrollError::Csr(_))));
        assert!(e.redeem(&request(&token, None)).is_ok());
    }
}
