//! Which handler answers an authenticated request (the caller's role was checked
//! before: see [`super::auth::needed`]).

use super::auth::Caller;
use super::reply::{error, json, Reply};
use super::{
    audit, backup, calls, cdrs, cluster, extensions, not_allowed, pbx, registrations, tokens,
    AdminState,
};
use hyper::{Method, StatusCode};
use std::sync::Arc;

/// One authenticated request, its body already read.
pub struct Call<'a> {
    /// Who asks.
    pub caller: &'a Caller,
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string.
    pub query: Option<&'a str>,
    /// The body.
    pub body: &'a bytes::Bytes,
}

/// Answers `call`.
pub async fn dispatch(state: &Arc<AdminState>, call: Call<'_>) -> Reply {
    let Call {
        caller,
        method,
        path,
        query,
        body,
    } = call;
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let data = &state.data;
    match path {
        "/v1/counters" if get => return counters(state),
        "/v1/counters" => return not_allowed(method, path, "GET"),
        "/v1/cluster" if get => return cluster::status(state.clone()).await,
        "/v1/cluster" => return not_allowed(method, path, "GET"),
        "/v1/cluster/tokens" if post => return cluster::issue_token(state.clone(), body).await,
        "/v1/cluster/tokens" => return not_allowed(method, path, "POST"),
        "/v1/cluster/transfer-leader" if post => {
            return cluster::transfer_leader(state.clone(), body).await
        }
        "/v1/cluster/transfer-leader" => return not_allowed(method, path, "POST"),
        "/v1/extensions" if get => return extensions::list(data, query),
        "/v1/extensions" if post => return extensions::create(data, body).await,
        "/v1/extensions" => return not_allowed(method, path, "GET, POST"),
        "/v1/calls" if get => return calls::list(data, query),
        "/v1/calls" => return not_allowed(method, path, "GET"),
        "/v1/tokens" if get => return tokens::list(data, query),
        "/v1/tokens" if post => return tokens::create(data, body).await,
        "/v1/tokens" => return not_allowed(method, path, "GET, POST"),
        "/v1/registrations" if get => return registrations::list(data, query),
        "/v1/registrations" => return not_allowed(method, path, "GET"),
        "/v1/cdrs" if get => return cdrs::list(data, query),
        "/v1/cdrs" => return not_allowed(method, path, "GET"),
        "/v1/cdrs.csv" if get => return cdrs::csv(data, query),
        "/v1/cdrs.csv" => return not_allowed(method, path, "GET"),
        "/v1/pbx" if post => return pbx::apply(data, query, body).await,
        "/v1/pbx" => return not_allowed(method, path, "POST"),
        "/v1/backup" if get => return backup::backup(state).await,
        "/v1/backup" => return not_allowed(method, path, "GET"),
        "/v1/restore" if post => return backup::restore(data, body).await,
        "/v1/restore" => return not_allowed(method, path, "POST"),
        "/v1/audit" if get => return audit::list(data, query),
        "/v1/audit" => return not_allowed(method, path, "GET"),
        _ => {}
    }
    if let Some(number) = path.strip_prefix("/v1/extensions/") {
        return match *method {
            Method::GET => extensions::get(data, number),
            Method::PATCH => extensions::change(data, number, body).await,
            Method::DELETE => extensions::remove(data, number, query).await,
            _ => not_allowed(method, path, "GET, PATCH, DELETE"),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/calls/") {
        return match *method {
            Method::DELETE => calls::hang_up(state, &decoded(id)).await,
            _ => not_allowed(method, path, "DELETE"),
        };
    }
    if let Some(aor) = path.strip_prefix("/v1/registrations/") {
        return match *method {
            Method::DELETE => registrations::remove(data, &decoded(aor), query).await,
            _ => not_allowed(method, path, "DELETE"),
        };
    }
    if let Some(name) = path.strip_prefix("/v1/tokens/") {
        return match *method {
            Method::DELETE => tokens::remove(data, caller, &decoded(name)).await,
            _ => not_allowed(method, path, "DELETE"),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/cluster/members/") {
        match rest.split_once('/') {
            None if *method == Method::DELETE => return cluster::remove(state.clone(), rest).await,
            None => return not_allowed(method, path, "DELETE"),
            Some((id, "remove")) if post => return cluster::remove(state.clone(), id).await,
            Some((_, "remove")) => return not_allowed(method, path, "POST"),
            Some(_) => {}
        }
    }
    error(StatusCode::NOT_FOUND, format!("no such resource: {path}"))
}

/// A percent-decoded path segment.
pub fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The node's counters by name.
fn counters(state: &AdminState) -> Reply {
    let map: serde_json::Map<String, serde_json::Value> = state
        .metrics
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    json(StatusCode::OK, serde_json::Value::Object(map))
}
