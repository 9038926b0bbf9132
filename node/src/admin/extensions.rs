//! `/v1/extensions`: list, read, create, change and delete extensions. Every change
//! names the version it was based on, so that two operators editing one extension get
//! 409 instead of overwriting each other; passwords are never sent back.

use super::body::read_json;
use super::data::Data;
use super::query::{paged, Query};
use super::reply::{error, field_error, json, Reply};
use crate::routing::Extension;
use crate::store::{self, Command, Expect, Outcome};

use hyper::StatusCode;
use serde_json::{json, Value};
use std::net::IpAddr;

/// An extension as the API shows it: everything but the password, with its version.
fn shown(e: &Extension, version: u64) -> Value {
    json!({
        "number": e.number,
        "name": e.name,
        "max_contacts": e.max_contacts,
        "trusted_ips": e.trusted_ips,
        "version": version,
    })
}

/// `GET /v1/extensions?prefix=&name=&limit=&offset=`: the extensions whose number starts
/// with `prefix` and whose name contains `name` (any case), in number order, a page at
/// a time.
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let page = match q
        .only(&["prefix", "name", "limit", "offset"])
        .and_then(|()| q.page())
    {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let prefix = q.get("prefix").unwrap_or_default();
    if !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return field_error("prefix", "must be digits (the start of extension numbers)");
    }
    let name = q.get("name").map(str::to_lowercase);
    match data.read(store::versioned_extensions) {
        Ok(all) => {
            let kept: Vec<Value> = all
                .iter()
                .filter(|(e, _)| e.number.starts_with(prefix))
                .filter(|(e, _)| {
                    name.as_deref()
                        .is_none_or(|n| e.name.to_lowercase().contains(n))
                })
                .map(|(e, v)| shown(e, *v))
                .collect();
            let (items, meta) = page.apply(kept);
            json(StatusCode::OK, paged("extensions", items, meta))
        }
        Err(r) => *r,
    }
}

/// `GET /v1/extensions/{number}`.
pub fn get(data: &Data, number: &str) -> Reply {
    match data.read(|db| store::extension(db, number)) {
        Ok(Some((e, v))) => json(StatusCode::OK, shown(&e, v)),
        Ok(None) => no_such(number),
        Err(r) => *r,
    }
}

fn no_such(number: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        format!("no extension {number}; `switchctl extension list` shows them"),
    )
}

/// `POST /v1/extensions`: creates one; 409 if the number is taken.
pub async fn create(data: &Data, body: &[u8]) -> Reply {
    let e: Extension = match read_json::<Option<Extension>>(body) {
        Ok(Some(e)) => e,
        Ok(None) => return field_error("number", "required (send the extension as JSON)"),
        Err(r) => return *r,
    };
    if let Err((field, reason)) = e.validate() {
        return field_error(field, reason);
    }
    let number = e.number.clone();
    let cmd = Command::PutExtension {
        extension: e,
        expect: Expect::Absent,
    };
    answer(data.write(cmd).await, &number, StatusCode::CREATED)
}

/// The fields a change may carry; those left out keep their value.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    version: Option<u64>,
    name: Option<String>,
    password: Option<String>,
    max_contacts: Option<usize>,
    trusted_ips: Option<Vec<IpAddr>>,
}

/// `PATCH /v1/extensions/{number}`: changes the given fields of the version named.
pub async fn change(data: &Data, number: &str, body: &[u8]) -> Reply {
    let c: Change = match read_json(body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(version) = c.version else {
        return field_error(
            "version",
            "required: the version you read (GET /v1/extensions/NUMBER), so that a concurrent change is not overwritten",
        );
    };
    // The other fields are merged onto the version named: read it as committed.
    if let Err(r) = data.catch_up().await {
        return *r;
    }
    let mut e = match data.read(|db| store::extension(db, number)) {
        Ok(Some((e, v))) if v == version => e,
        Ok(Some((_, v))) => return conflict(number, true, v),
        Ok(None) => return no_such(number),
        Err(r) => return *r,
    };
    if let Some(name) = c.name {
        e.name = name;
    }
    if let Some(password) = c.password {
        e.password = password;
    }
    if let Some(max) = c.max_contacts {
        e.max_contacts = Some(max);
    }
    if let Some(ips) = c.trusted_ips {
        e.trusted_ips = ips;
    }
    if let Err((field, reason)) = e.validate() {
        return field_error(field, reason);
    }
    let cmd = Command::PutExtension {
        extension: e,
        expect: Expect::Version(version),
    };
    answer(data.write(cmd).await, number, StatusCode::OK)
}

/// `DELETE /v1/extensions/{number}[?version=N]`: without a version, whatever version
/// is current.
pub async fn remove(data: &Data, number: &str, query: Option<&str>) -> Reply {
    let asked = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("version="));
    let version = match asked {
        Some(v) => match v.parse::<u64>() {
            Ok(v) => v,
            Err(_) => return field_error("version", "must be a whole number"),
        },
        None => {
            if let Err(r) = data.catch_up().await {
                return *r;
            }
            match data.read(|db| store::extension(db, number)) {
                Ok(Some((_, v))) => v,
                Ok(None) => return no_such(number),
                Err(r) => return *r,
            }
        }
    };
    let cmd = Command::RemoveExtension {
        number: number.to_string(),
        expect: Expect::Version(version),
    };
    answer(data.write(cmd).await, number, StatusCode::OK)
}

fn conflict(number: &str, exists: bool, version: u64) -> Reply {
    if !exists {
        return no_such(number);
    }
    json(
        StatusCode::CONFLICT,
        json!({
            "error": format!("extension {number} is now at version {version}: it changed since you read it; read it again and retry"),
            "version": version,
        }),
    )
}

fn answer(written: Result<Outcome, Box<Reply>>, number: &str, ok: StatusCode) -> Reply {
    match written {
        Ok(Outcome::Version(v)) => json(ok, json!({ "number": number, "version": v })),
        Ok(Outcome::Conflict { exists, version }) if ok == StatusCode::CREATED && exists => json(
            StatusCode::CONFLICT,
            json!({
                "error": format!("extension {number} exists already (version {version}); change it with `switchctl extension set`"),
                "version": version,
            }),
        ),
        Ok(Outcome::Conflict { exists, version }) => conflict(number, exists, version),
        Ok(Outcome::Done) => json(ok, json!({ "number": number })),
        Err(r) => *r,
    }
}
