//! `POST /v1/pbx?dry_run=&prune=`: a declarative PBX description (the seed format, as
//! JSON) compared with the running PBX; the plan is answered and, unless it is a dry
//! run, applied all at once. What `switchctl apply -f pbx.yaml` calls.

use super::body::read_json;
use super::data::Data;
use super::query::Query;
use super::reply::{error, field_error, json, Reply};
use crate::routing::extensions::SeedError;
use crate::routing::plan::{plan, Change};
use crate::routing::PbxSeed;
use crate::store::{self, Command, Outcome};
use hyper::StatusCode;

/// Answers the plan from the running PBX to the one in `body`, applied unless
/// `dry_run`; with `prune` (the default) extensions the body does not list are removed.
pub async fn apply(data: &Data, query: Option<&str>, body: &[u8]) -> Reply {
    let q = Query::parse(query);
    let flags = q
        .only(&["dry_run", "prune"])
        .and_then(|()| Ok((q.flag("dry_run", false)?, q.flag("prune", true)?)));
    let (dry_run, prune) = match flags {
        Ok(f) => f,
        Err(r) => return *r,
    };
    // An empty body is no description at all, not "no extensions" (which would remove
    // every one).
    if body.iter().all(u8::is_ascii_whitespace) {
        return field_error("extensions", "required: send the PBX description as JSON");
    }
    let wanted: PbxSeed = match read_json(body) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if let Err(SeedError::Invalid {
        index,
        field,
        reason,
    }) = wanted.validate()
    {
        return field_error(&format!("extensions[{index}].{field}"), &reason);
    }
    // The plan must start from every change acknowledged before it.
    if let Err(r) = data.catch_up().await {
        return *r;
    }
    let running = match data.read(store::versioned_extensions) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let changes = plan(&running, &wanted, prune);
    let answer = |applied: bool| {
        json(
            StatusCode::OK,
            serde_json::json!({ "changes": changes, "applied": applied, "dry_run": dry_run }),
        )
    };
    if dry_run || changes.is_empty() {
        return answer(false);
    }
    let cmd = Command::AllOrNothing(changes.iter().map(Change::command).collect());
    match data.write(cmd).await {
        Ok(Outcome::Conflict { .. }) => error(
            StatusCode::CONFLICT,
            "the PBX changed while this plan was being applied; nothing was applied: run apply again",
        ),
        Ok(_) => answer(true),
        Err(r) => *r,
    }
}
