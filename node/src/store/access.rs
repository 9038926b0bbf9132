//! Who may use the admin API and what they changed: API tokens (only their SHA-256
//! hashes are stored, so a copy of the state does not hand out access) and the audit
//! log of changes made through the API, both replicated like the rest of the state.

use super::{be_u64, decode, encode, handle, StoreError};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

/// The column family of API tokens, by name.
pub(super) const CF_TOKENS: &str = "tokens";
/// The column family of the audit log, by sequence number.
pub(super) const CF_AUDIT: &str = "audit";
/// The audit log keeps this many entries; older ones are dropped as new ones come,
/// so that a busy automation cannot grow the state without bound.
pub const AUDIT_KEPT: u64 = 100_000;
const KEY_NEXT_AUDIT: &[u8] = b"next_audit";

/// What a token's holder may do, each role including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// May read (GET) everything but tokens and the audit log.
    #[serde(rename = "read-only")]
    ReadOnly,
    /// May also act on calls and registrations and edit extensions.
    #[serde(rename = "operator")]
    Operator,
    /// May also manage tokens and the cluster, and read the audit log.
    #[serde(rename = "admin")]
    Admin,
}

impl Role {
    /// The role's name as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name as [`Role::as_str`] spells it.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::ReadOnly, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A stored API token: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Unique name, to list and revoke it by.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub hash: String,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
}

/// One change made through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number, assigned when the entry is applied (0 in the command).
    #[serde(default)]
    pub id: u64,
    /// When the request was answered (RFC 3339, UTC).
    pub at: String,
    /// The name of the token that made it.
    pub token: String,
    /// That token's role.
    pub role: Role,
    /// HTTP method.
    pub method: String,
    /// Request path (with its query).
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// The client's address.
    pub remote: String,
    /// What was asked, secrets left out.
    pub summary: String,
}

/// Stages a new token; answers false (and stages nothing) if the name is taken.
pub(super) fn put_token(db: &DB, batch: &mut WriteBatch, t: &ApiToken) -> Result<bool, StoreError> {
    let cf = handle(db, CF_TOKENS)?;
    if db.get_pinned_cf(cf, &t.name)?.is_some() {
        return Ok(false);
    }
    batch.put_cf(cf, &t.name, encode(t));
    Ok(true)
}

/// Stages a token's removal; answers false if there is no such token.
pub(super) fn remove_token(
    db: &DB,
    batch: &mut WriteBatch,
    name: &str,
) -> Result<bool, StoreError> {
    let cf = handle(db, CF_TOKENS)?;
    if db.get_pinned_cf(cf, name)?.is_none() {
        return Ok(false);
    }
    batch.delete_cf(cf, name);
    Ok(true)
}

/// Stages an audit entry under the next sequence number (`next` carries it across the
/// commands of one batch; `None` reads it from the store) and drops the entry that
/// falls out of the kept window.
pub(super) fn append_audit(
    db: &DB,
    batch: &mut WriteBatch,
    entry: &AuditEntry,
    next: &mut Option<u64>,
) -> Result<(), StoreError> {
    let id = match *next {
        Some(n) => n,
        None => next_audit_number(db)?,
    };
    let cf = handle(db, CF_AUDIT)?;
    let mut e = entry.clone();
    e.id = id;
    batch.put_cf(cf, id.to_be_bytes(), encode(&e));
    if id > AUDIT_KEPT {
        batch.delete_cf(cf, (id - AUDIT_KEPT).to_be_bytes());
    }
    batch.put_cf(
        handle(db, super::CF_META)?,
        KEY_NEXT_AUDIT,
        (id + 1).to_be_bytes(),
    );
    *next = Some(id + 1);
    Ok(())
}

fn next_audit_number(db: &DB) -> Result<u64, StoreError> {
    Ok(db
        .get_cf(handle(db, super::CF_META)?, KEY_NEXT_AUDIT)?
        .and_then(|v| be_u64(&v))
        .unwrap_or(1))
}

/// Every token, by name.
pub fn tokens(db: &DB) -> Result<Vec<ApiToken>, StoreError> {
    super::scan(db, CF_TOKENS, |_, v| Ok(v))
}

/// The token whose hash is `hash`, if any.
pub fn token_by_hash(db: &DB, hash: &str) -> Result<Option<ApiToken>, StoreError> {
    // A handful of tokens: a scan is cheaper than keeping a second index in step.
    Ok(tokens(db)?.into_iter().find(|t| t.hash == hash))
}

/// Audit entries with an id above `after` and a time not before `since` (RFC 3339,
/// compared as text: every entry is written in the same UTC format), oldest first, at
/// most `limit`.
pub fn audit(
    db: &DB,
    after: u64,
    since: Option<&str>,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let cf = handle(db, CF_AUDIT)?;
    let from = (after + 1).to_be_bytes();
    let mode = IteratorMode::From(&from, rocksdb::Direction::Forward);
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, mode) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = item?;
        let e: AuditEntry = decode(CF_AUDIT, &v)?;
        if since.is_none_or(|s| e.at.as_str() >= s) {
            out.push(e);
        }
    }
    Ok(out)
}
