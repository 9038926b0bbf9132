//! The openraft type configuration: what travels in log entries and who the members are.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

/// A serialized command or response, kept as its JSON text.
///
/// Raft never looks inside: the text is embedded verbatim in log records and RPCs, so
/// it costs no second encoding (a byte vector would become a JSON array of numbers).
#[derive(Clone, Serialize, Deserialize)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Serializes `value`.
    pub fn encode<T: Serialize>(value: &T) -> Result<Payload, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// Deserializes the value back.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The serialized text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.0.get())
    }
}

/// A cluster member as recorded in the Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where its Raft RPCs (the QUIC transport) listen.
    pub raft_addr: SocketAddr,
    /// Its HTTP admin API, for operators and the CLI.
    pub admin_addr: String,
}

/// openraft demands a default node; an unspecified address can never be dialled.
impl Default for Member {
    fn default() -> Self {
        Member {
            raft_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            admin_addr: String::new(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raft_addr)
    }
}

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The type configuration of this crate's Raft.
    pub TypeConfig:
        D = Payload,
        R = Payload,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of this configuration.
pub(crate) type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub(crate) type LogId = openraft::LogId<NodeId>;
/// Storage failure as openraft wants it.
pub(crate) type StorageError = openraft::StorageError<NodeId>;
/// Membership with its log id.
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Snapshot metadata.
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A log entry.
pub(crate) type Entry = openraft::Entry<TypeConfig>;
