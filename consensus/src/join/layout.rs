//! Where a member keeps its files under its data dir, and the small record of how it is
//! reached, so a restart needs nothing but the data dir.
//!
//! ```text
//! <data_dir>/member.json   node id, Raft address, admin address
//! <data_dir>/tls/          ca.crt, ca.key (every member: any of them admits new nodes), node.crt, node.key
//! <data_dir>/raft/         the Raft log and state machine (RocksDB)
//! ```

use super::JoinError;
use crate::net::tls::NODE_CERT_FILE;
use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const MEMBER_FILE: &str = "member.json";

/// How a member is reached, as recorded in its data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub(crate) node_id: NodeId,
    pub(crate) raft_addr: SocketAddr,
    pub(crate) admin_addr: String,
}

/// The certificate and key directory.
pub(crate) fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The Raft store directory.
pub(crate) fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fails if `data_dir` already holds a node identity (enrolling twice would orphan it).
pub(crate) fn ensure_fresh(data_dir: &Path) -> Result<(), JoinError> {
    let cert = tls_dir(data_dir).join(NODE_CERT_FILE);
    if cert.exists() {
        return Err(JoinError::AlreadyEnrolled(data_dir.to_owned()));
    }
    Ok(())
}

/// Creates the data dir and its `tls/` directory, the latter readable by the owner only.
pub(crate) fn create_tls_dir(data_dir: &Path) -> Result<PathBuf, JoinError> {
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let tls = tls_dir(data_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tls)
        .map_err(io(&tls))?;
    Ok(tls)
}

/// Records how this member is reached.
pub(crate) fn save_member(data_dir: &Path, record: &MemberRecord) -> Result<(), JoinError> {
    let path = data_dir.join(MEMBER_FILE);
    let tmp = data_dir.join(format!("{MEMBER_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(record).map_err(|e| JoinError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    fs::write(&tmp, json).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// Reads what [`save_member`] wrote.
pub(crate) fn load_member(data_dir: &Path) -> Result<MemberRecord, JoinError> {
    let path = data_dir.join(MEMBER_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JoinError::NotEnrolled(data_dir.to_owned()))
        }
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| JoinError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}
