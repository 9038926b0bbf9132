//! `/v1/registrations`: the registered contacts (cluster-wide), and unregistering an
//! address of record (all its contacts, or one) as a replicated binding removal, so
//! every member's registrar forgets it.

use super::data::Data;
use super::query::{paged, Query};
use super::reply::{error, json, Reply};
use crate::store::{self, Command};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/registrations?extension=&limit=&offset=`: live contacts by extension.
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let (page, extension) = match q.extension_page() {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let all = match data.read(store::bindings) {
        Ok(all) => all,
        Err(r) => return *r,
    };
    let now = unix_now();
    let rows: Vec<Value> = all
        .into_iter()
        .filter(|(aor, b)| extension.is_none_or(|e| e == aor) && b.expires_at > now)
        .map(|(aor, b)| {
            json!({
                "aor": aor,
                "contact": b.contact,
                "expires_at": b.expires_at,
                "expires_in": b.expires_at.saturating_sub(now),
                "source": format!("{}:{}", b.source.transport.as_str(), b.source.addr),
                "user_agent": b.user_agent,
                "q": b.q,
            })
        })
        .collect();
    let (items, meta) = page.apply(rows);
    json(StatusCode::OK, paged("registrations", items, meta))
}

/// `DELETE /v1/registrations/{aor}[?contact=URI]`: unregisters every contact of the
/// address of record, or the one named.
pub async fn remove(data: &Data, aor: &str, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    if let Err(r) = q.only(&["contact"]) {
        return *r;
    }
    let contact = q.get("contact");
    let all = match data.read(store::bindings) {
        Ok(all) => all,
        Err(r) => return *r,
    };
    let removed: Vec<String> = all
        .into_iter()
        .filter(|(a, b)| a == aor && contact.is_none_or(|c| c == b.contact))
        .map(|(_, b)| b.contact)
        .collect();
    if removed.is_empty() {
        let what = contact.map_or(String::new(), |c| format!(" with contact {c}"));
        return error(
            StatusCode::NOT_FOUND,
            format!("no registration of {aor}{what}; `switchctl registrations list` shows them"),
        );
    }
    let cmds: Vec<Command> = removed
        .iter()
        .map(|c| Command::RemoveBinding {
            aor: aor.to_string(),
            contact: c.clone(),
        })
        .collect();
    match data.write(Command::Batch(cmds)).await {
        Ok(_) => json(StatusCode::OK, json!({ "aor": aor, "removed": removed })),
        Err(r) => *r,
    }
}
