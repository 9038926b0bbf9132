//! `/v1/calls`: the calls in progress (cluster-wide), and hanging one up. Only the
//! node that owns a call (the VIP holder) may end it: the request goes to its SIP core,
//! which sends the BYEs and writes the CDR, as for any other call end.

use super::data::Data;
use super::query::{paged, Query};
use super::reply::{error, json, Reply};
use super::AdminState;
use crate::core::AdminRequest;
use hyper::StatusCode;
use serde_json::json;
use std::time::Duration;

/// How long the SIP core may take to act on a hang-up.
const CORE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /v1/calls?extension=&limit=&offset=`: oldest first; `extension` matches the
/// caller or the callee.
pub fn list(data: &Data, query: Option<&str>) -> Reply {
    let q = Query::parse(query);
    let (page, extension) = match q.extension_page() {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match data.read(crate::store::calls) {
        Ok(mut all) => {
            all.retain(|c| extension.is_none_or(|e| c.caller == e || c.callee == e));
            all.sort_by(|a, b| a.start.cmp(&b.start));
            let rows = all
                .into_iter()
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .collect();
            let (items, meta) = page.apply(rows);
            json(StatusCode::OK, paged("calls", items, meta))
        }
        Err(r) => *r,
    }
}

/// `DELETE /v1/calls/{call_id}`: hangs the call up (BYE to both legs, or a ringing
/// call cancelled), on the node that owns it.
pub async fn hang_up(state: &AdminState, call_id: &str) -> Reply {
    let calls = match state.data.read(crate::store::calls) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(record) = calls.into_iter().find(|c| c.call_id == call_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no call {call_id:?} in progress; `switchctl calls list` shows them"),
        );
    };
    let Some(core) = &state.core else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs no SIP core",
        );
    };
    let (done, answer) = tokio::sync::oneshot::channel();
    let request = AdminRequest::HangUp {
        call_id: call_id.to_string(),
        done,
    };
    if core.try_send(request).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the SIP core is busy or stopping; retry",
        );
    }
    match tokio::time::timeout(CORE_TIMEOUT, answer).await {
        Ok(Ok(true)) => json(
            StatusCode::OK,
            json!({ "call_id": call_id, "hung_up": true }),
        ),
        Ok(Ok(false)) if record.node != state.node_id => error(
            StatusCode::CONFLICT,
            format!(
                "call {call_id:?} is handled by node {}, the VIP holder: ask its admin API (`switchctl cluster status` lists it)",
                record.node
            ),
        ),
        Ok(Ok(false)) => error(
            StatusCode::CONFLICT,
            format!("call {call_id:?} is recorded on this node but its SIP core no longer holds it (it is ending, or the VIP moved); list the calls again"),
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the SIP core did not act within {CORE_TIMEOUT:?}; retry"),
        ),
    }
}
