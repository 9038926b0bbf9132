//! The audit log: every change made through the API (who, from where, what, and the
//! answer), appended to the replicated state and read back with `GET /v1/audit`.

use super::auth::Caller;
use super::data::Data;
use super::query::Query;
use super::reply::{field_error, json, Reply};
use crate::store::{self, AuditEntry, Command};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The longest summary kept per entry.
const MAX_SUMMARY: usize = 512;
/// Request fields that are never written to the log.
const SECRETS: [&str; 3] = ["password", "token", "secret"];

/// What one change was, for the log.
pub struct Change<'a> {
    /// Who made it.
    pub caller: &'a Caller,
    /// Method and path (with query).
    pub method: &'a Method,
    /// The path and query asked for.
    pub target: &'a str,
    /// The client's address.
    pub remote: SocketAddr,
    /// The request body.
    pub body: &'a [u8],
}

/// Appends the change and its answer to the audit log. A change that was made but
/// cannot be logged (the cluster lost its leader in between) is reported in the node's
/// log rather than turning a done change into an error.
pub async fn record(data: &Data, change: Change<'_>, status: StatusCode) {
    let entry = AuditEntry {
        id: 0,
        at: crate::calls::cdr::rfc3339(std::time::SystemTime::now()),
        token: change.caller.name.clone(),
        role: change.caller.role,
        method: change.method.to_string(),
        path: change.target.to_string(),
        status: status.as_u16(),
        remote: change.remote.to_string(),
        summary: summary(change.body),
    };
    if let Err(r) = data
        .write(Command::AppendAudit(Box::new(entry.clone())))
        .await
    {
        tracing::warn!(status = %r.status(), ?entry, "admin change not written to the audit log");
    }
}

/// The request body with secrets masked, shortened to [`MAX_SUMMARY`].
fn summary(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            mask(&mut v);
            v.to_string()
        }
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => String::new(),
        Err(_) => format!("({} bytes, not JSON)", body.len()),
    };
    match text.char_indices().nth(MAX_SUMMARY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn mask(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if SECRETS.iter().any(|s| k.to_ascii_lowercase().contains(s)) {
                    *v = Value::String("***".into());
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

/// `GET /v1/audit?since=&after=&limit=`: entries oldest first. `since` is a time
/// (RFC 3339) or an entry id; `after` an entry id, to page on from the last one seen.
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    if let Err(r) = q.only(&["since", "after", "limit"]) {
        return *r;
    }
    let limit = match q.page() {
        Ok(p) => p.limit,
        Err(r) => return *r,
    };
    let mut after = match q.number("after") {
        Ok(a) => a.unwrap_or(0),
        Err(r) => return *r,
    };
    let mut since_at = None;
    if let Some(since) = q.get("since") {
        if let Ok(id) = since.parse::<u64>() {
            after = after.max(id.saturating_sub(1));
        } else {
            match chrono::DateTime::parse_from_rfc3339(since) {
                Ok(t) => {
                    since_at = Some(
                        t.with_timezone(&chrono::Utc)
                            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                            .to_string(),
                    )
                }
                Err(_) => {
                    return field_error(
                        "since",
                        "must be an RFC 3339 time (2026-01-31T08:00:00Z) or an entry id",
                    )
                }
            }
        }
    }
    match data.read(|db| store::audit(db, after, since_at.as_deref(), limit)) {
        Ok(entries) => {
            let last = entries.last().map(|e| e.id);
            json(StatusCode::OK, json!({ "entries": entries, "last": last }))
        }
        Err(r) => *r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_summaries_bounded() {
        let s = summary(br#"{"number":"1001","password":"pw","nested":{"api_token":"t"}}"#);
        assert!(
            s.contains("1001") && !s.contains("\"pw\"") && !s.contains("\"t\""),
            "{s}"
        );
        assert_eq!(summary(b""), "");
        assert_eq!(summary(b"{oops"), "(5 bytes, not JSON)");
        let long = format!("{{\"name\":\"{}\"}}", "x".repeat(2000));
        assert!(summary(long.as_bytes()).chars().count() <= MAX_SUMMARY + 1);
    }
}
