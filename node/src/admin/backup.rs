//! `GET /v1/backup` (the replicated state as a backup file) and `POST /v1/restore`
//! (a backup file replaces the state, on every member at once). See
//! [`crate::store::backup`] for the file and [`crate::store::Command::RestoreCommit`]
//! for what a restore keeps.

use super::data::Data;
use super::reply::{attachment, error, json, Reply};
use super::AdminState;
use crate::store::backup::{self, Record};
use crate::store::{Command, Outcome};
use hyper::StatusCode;
use rand::RngCore;

/// Bytes of records per replicated chunk: far below the transport's message bound, and
/// small enough that a chunk never holds up the heartbeats queued behind it.
const CHUNK_BYTES: usize = 512 * 1024;

/// `GET /v1/backup`: a consistent copy of everything this member applied once it caught
/// up with the leader (so it holds every change acknowledged before the request).
pub async fn backup(state: &AdminState) -> Reply {
    if let Err(r) = state.data.catch_up().await {
        return *r;
    }
    let applied = state
        .member()
        .and_then(|m| m.upgrade())
        .and_then(|m| m.applied_index());
    let now = std::time::SystemTime::now();
    let created = crate::calls::cdr::rfc3339(now);
    let (node_id, stamp) = (state.node_id, created.clone());
    let file = match state
        .data
        .read_blocking(move |db| backup::write(db, node_id, applied, stamp))
        .await
    {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let stamp: String = created
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    attachment(
        file,
        "application/octet-stream",
        &format!("softswitch-{stamp}.backup"),
    )
}

/// `POST /v1/restore` with a backup file as the body: checked whole first, then staged
/// in chunks through the log and swapped in by one final command, so every member
/// changes at the same log index and a restore cut off halfway changes nothing.
pub async fn restore(data: &Data, body: &bytes::Bytes) -> Reply {
    // Checking up to 512 MiB takes a while: off the runtime's workers.
    let bytes = body.clone();
    let file = match tokio::task::spawn_blocking(move || backup::read(&bytes)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut raw = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = hex::encode(raw);
    if let Err(r) = data.write(Command::RestoreBegin { id: id.clone() }).await {
        return *r;
    }
    let (header, records) = (file.header, file.records);
    let total = records.len() as u64;
    for records in chunks(records) {
        let cmd = Command::RestoreChunk {
            id: id.clone(),
            records,
        };
        match data.write(cmd).await {
            Ok(Outcome::Conflict { .. }) => return superseded(),
            Ok(_) => {}
            Err(r) => return *r,
        }
    }
    let commit = Command::RestoreCommit { id, records: total };
    match data.write(commit).await {
        Ok(Outcome::Conflict { .. }) => superseded(),
        Ok(_) => json(
            StatusCode::OK,
            serde_json::json!({
                "restored": header.counts,
                "backup": header,
            }),
        ),
        Err(r) => *r,
    }
}

fn superseded() -> Reply {
    error(
        StatusCode::CONFLICT,
        "another restore started while this one was being sent; nothing of this one was applied",
    )
}

/// Splits `records` into chunks of about [`CHUNK_BYTES`] (a record larger than that
/// goes alone).
fn chunks(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for r in records {
        if size + r.weight() > CHUNK_BYTES && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += r.weight();
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_chunked_by_size_and_none_is_lost() {
        let record = |n: usize| Record {
            cf: "cdrs".into(),
            key: vec![0; 8],
            value: vec![b'x'; n],
        };
        let records: Vec<Record> = (0..1000)
            .map(|_| record(1000))
            .chain([record(2 * CHUNK_BYTES)])
            .collect();
        let chunks = chunks(records.clone());
        assert!(chunks.len() > 3);
        for c in &chunks {
            let size: usize = c.iter().map(Record::weight).sum();
            assert!(size <= CHUNK_BYTES || c.len() == 1, "{size}");
        }
        assert_eq!(chunks.concat(), records);
        assert!(super::chunks(vec![]).is_empty());
    }
}
