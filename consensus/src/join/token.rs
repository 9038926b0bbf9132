//! The one-time join token: what an operator copies from a member to a new node.
//!
//! `ssjoin1.<base64url(JSON)>`, the JSON holding the issuer's Raft address, the 32-byte
//! secret (hex) and the cluster CA certificate, so the new node can verify the issuer
//! with nothing but the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Prefix naming the token format and its version.
pub const TOKEN_PREFIX: &str = "ssjoin1.";
/// Length of the secret in bytes.
pub const SECRET_LEN: usize = 32;
/// Longest token accepted, so a pasted file cannot make us decode megabytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A join token: where to enroll, the one-time secret, and whom to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    issuer: SocketAddr,
    secret: [u8; SECRET_LEN],
    ca_pem: String,
}

/// The JSON inside the token.
#[derive(Serialize, Deserialize)]
struct Body {
    addr: SocketAddr,
    secret: String,
    ca: String,
}

/// A token that could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed join token ({0}); copy the whole line printed by `switchctl cluster token`")]
pub struct TokenParseError(String);

impl JoinToken {
    /// A token for the issuer at `issuer`, with its `secret` and the CA certificate.
    pub fn new(issuer: SocketAddr, secret: [u8; SECRET_LEN], ca_pem: String) -> JoinToken {
        JoinToken {
            issuer,
            secret,
            ca_pem,
        }
    }

    /// Where the issuing node's Raft transport listens.
    pub fn issuer(&self) -> SocketAddr {
        self.issuer
    }

    /// The one-time secret.
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// The cluster CA certificate (PEM) to verify the issuer with.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = Body {
            addr: self.issuer,
            secret: hex::encode(self.secret),
            ca: self.ca_pem.clone(),
        };
        // Serializing three plain fields cannot fail; an empty body would only make the
        // token unparseable, never wrong.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        write!(f, "{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }
}

/// The secret stays out of logs.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<JoinToken, TokenParseError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenParseError(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let encoded = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| TokenParseError(format!("it does not start with {TOKEN_PREFIX}")))?;
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|e| TokenParseError(format!("base64: {e}")))?;
        let body: Body =
            serde_json::from_slice(&json).map_err(|e| TokenParseError(format!("content: {e}")))?;
        let secret = hex::decode(&body.secret)
            .ok()
            .and_then(|s| <[u8; SECRET_LEN]>::try_from(s).ok())
            .ok_or_else(|| TokenParseError(format!("the secret is not {SECRET_LEN} bytes")))?;
        if !body.ca.contains("BEGIN CERTIFICATE") {
            return Err(TokenParseError("no CA certificate".into()));
        }
        Ok(JoinToken {
            issuer: body.addr,
            secret,
            ca_pem: body.ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn round_trips_through_text() {
        let t = JoinToken::new("10.0.0.1:7000".parse().unwrap(), [7; 32], CA.into());
        let text = t.to_string();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        assert_eq!(format!(" {text}\n").parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("0707"));
    }

    #[test]
    fn garbage_is_refused_with_advice() {
        for bad in ["", "ssjoin1.", "ssjoin2.abc", "ssjoin1.!!!", "ssjoin1.e30"] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains("switchctl cluster token"), "{bad}: {e}");
        }
    }
}
