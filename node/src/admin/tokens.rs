//! `/v1/tokens`: the admin API's bearer tokens. A token is shown once, when it is
//! created; the state keeps only its hash.

use super::auth::{self, Caller};
use super::body::read_json;
use super::data::Data;
use super::query::{paged, Query};
use super::reply::{error, field_error, json, Reply};
use crate::store::{self, Command, Outcome, Role};
use hyper::StatusCode;
use serde_json::json;

/// The longest token name.
const MAX_NAME: usize = 64;

/// `GET /v1/tokens`: names, roles and creation times (never hashes).
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let page = match q.only(&["limit", "offset", "role"]).and_then(|_| q.page()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let role = match q.get("role").map(|r| Role::parse(r).ok_or(r)) {
        Some(Err(_)) => return field_error("role", "must be admin, operator or read-only"),
        Some(Ok(r)) => Some(r),
        None => None,
    };
    let all = match data.read(store::tokens) {
        Ok(all) => all,
        Err(r) => return *r,
    };
    let shown = all
        .into_iter()
        .filter(|t| role.is_none_or(|r| t.role == r))
        .map(|t| json!({ "name": t.name, "role": t.role, "created": t.created }))
        .collect();
    let (items, meta) = page.apply(shown);
    json(StatusCode::OK, paged("tokens", items, meta))
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: Option<String>,
    role: Option<String>,
}

/// Checks a token name: 1 to 64 letters, digits, `.`, `_` or `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `POST /v1/tokens` `{name, role}`: creates a token and shows it, this once.
pub async fn create(data: &Data, body: &[u8]) -> Reply {
    let req: NewToken = match read_json(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(name) = req.name.filter(|n| valid_name(n)) else {
        return field_error("name", "required: 1 to 64 letters, digits, '.', '_' or '-'");
    };
    let Some(role) = req.role.as_deref().and_then(Role::parse) else {
        return field_error("role", "required: admin, operator or read-only");
    };
    let (token, hash) = auth::new_token();
    let created = crate::calls::cdr::rfc3339(std::time::SystemTime::now());
    let cmd = Command::PutApiToken {
        name: name.clone(),
        role,
        hash,
        created: created.clone(),
    };
    match data.write(cmd).await {
        Ok(Outcome::Conflict { .. }) => error(
            StatusCode::CONFLICT,
            format!("a token named {name:?} exists already; remove it first or pick another name"),
        ),
        Ok(_) => json(
            StatusCode::CREATED,
            json!({
                "name": name,
                "role": role,
                "created": created,
                "token": token,
                "note": "the token is shown only now: keep it",
            }),
        ),
        Err(r) => *r,
    }
}

/// `DELETE /v1/tokens/{name}`: revokes a token at once on every member. The last
/// admin token is kept, so that the API cannot be locked for good.
pub async fn remove(data: &Data, caller: &Caller, name: &str) -> Reply {
    let all = match data.read(store::tokens) {
        Ok(all) => all,
        Err(r) => return *r,
    };
    let Some(target) = all.iter().find(|t| t.name == name) else {
        return no_such(name);
    };
    let admins = all.iter().filter(|t| t.role == Role::Admin).count();
    if target.role == Role::Admin && admins == 1 {
        return error(
            StatusCode::CONFLICT,
            format!("{name:?} is the last admin token; create another admin token first"),
        );
    }
    match data
        .write(Command::RemoveApiToken {
            name: name.to_string(),
        })
        .await
    {
        Ok(Outcome::Conflict { .. }) => no_such(name),
        Ok(_) => json(
            StatusCode::OK,
            json!({ "removed": name, "by": caller.name }),
        ),
        Err(r) => *r,
    }
}

fn no_such(name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        format!("no token named {name:?}; `switchctl token list` shows them"),
    )
}
