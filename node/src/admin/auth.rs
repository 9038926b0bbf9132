//! Who is calling and what they may do: `Authorization: Bearer <token>` checked against
//! the replicated token hashes, and the role each request needs.

use super::data::Data;
use super::reply::{error, Reply};
use crate::store::{self, Role};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Paths anyone may read: load balancers and Prometheus probe them without a token.
pub const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The holder of the token a request carried.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// A new random token (32 bytes, hex) and its hash, as stored.
pub fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let hash = hash(&token);
    (token, hash)
}

/// The stored form of a token: SHA-256, lowercase hex. A token is 256 random bits, so
/// a plain hash (no salt, no stretching) is enough to make a leaked state useless.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 401 with the challenge that tells a client to send a bearer token.
fn unauthorized(message: &str) -> Box<Reply> {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Box::new(r)
}

/// The caller named by the request's bearer token; the error is the reply to send.
pub fn authenticate(data: &Data, headers: &HeaderMap) -> Result<Caller, Box<Reply>> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized(
            "send Authorization: Bearer TOKEN (the first admin token is in the node's data dir, file admin-token)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be: Bearer TOKEN"))?;
    let digest = hash(token);
    match data.read(|db| store::token_by_hash(db, &digest))? {
        Some(t) => Ok(Caller {
            name: t.name,
            role: t.role,
        }),
        None => Err(unauthorized("unknown or revoked token")),
    }
}

/// The least role that may make `method` on `path`.
pub fn needed(method: &Method, path: &str) -> Role {
    // A backup holds every extension's password; a restore replaces everything.
    let admin_only = ["/v1/tokens", "/v1/audit", "/v1/backup", "/v1/restore"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    let cluster = path == "/v1/cluster" || path.starts_with("/v1/cluster/");
    let reads = method == Method::GET || method == Method::HEAD;
    match (reads, admin_only, cluster) {
        (_, true, _) | (false, _, true) => Role::Admin,
        (true, _, _) => Role::ReadOnly,
        (false, _, _) => Role::Operator,
    }
}

/// 403 naming the role the request needs.
pub fn forbidden(caller: &Caller, needed: Role) -> Reply {
    error(
        StatusCode::FORBIDDEN,
        format!(
            "token {:?} has role {}; this request needs role {} or higher",
            caller.name,
            caller.role.as_str(),
            needed.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_needed() {
        assert_eq!(needed(&Method::GET, "/v1/extensions"), Role::ReadOnly);
        assert_eq!(needed(&Method::POST, "/v1/extensions"), Role::Operator);
        assert_eq!(needed(&Method::DELETE, "/v1/calls/x"), Role::Operator);
        assert_eq!(needed(&Method::GET, "/v1/cluster"), Role::ReadOnly);
        assert_eq!(needed(&Method::POST, "/v1/cluster/tokens"), Role::Admin);
        assert_eq!(needed(&Method::GET, "/v1/tokens"), Role::Admin);
        assert_eq!(needed(&Method::DELETE, "/v1/tokens/a"), Role::Admin);
        assert_eq!(needed(&Method::GET, "/v1/audit"), Role::Admin);
        assert!(Role::ReadOnly < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash(&a), ha);
        assert_ne!(a, ha);
    }
}
