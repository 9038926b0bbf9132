//! Encoding of Raft RPCs and forwarded proposals into the byte payloads the transport carries.
//!
//! JSON throughout (commands are already JSON text inside [`crate::Payload`]), except
//! snapshot chunks, whose data travels raw after a JSON header so megabytes of snapshot
//! do not become arrays of numbers.

use crate::types::{Member, NodeId, Payload, TypeConfig};
use openraft::raft::InstallSnapshotRequest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Encodes a message.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// Decodes a message.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// `u32 header_len | header JSON (data emptied) | data`.
pub(crate) fn encode_chunk(
    mut req: InstallSnapshotRequest<TypeConfig>,
) -> Result<Vec<u8>, serde_json::Error> {
    let data = std::mem::take(&mut req.data);
    let header = encode(&req)?;
    let len = u32::try_from(header.len()).map_err(serde::ser::Error::custom)?;
    let mut out = Vec::with_capacity(4 + header.len() + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Reverses [`encode_chunk`].
pub(crate) fn decode_chunk(bytes: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("snapshot chunk shorter than its header length")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("snapshot chunk header cut short".into());
    }
    let (header, data) = rest.split_at(len);
    let mut req: InstallSnapshotRequest<TypeConfig> =
        decode(header).map_err(|e| format!("snapshot chunk header: {e}"))?;
    req.data = data.to_vec();
    Ok(req)
}

/// A proposal forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ForwardedWrite {
    /// The encoded command.
    pub(crate) cmd: Payload,
    /// How long the leader may wait for the commit: the forwarder's remaining budget, so
    /// the leader answers "no quorum" before the forwarder gives up on it.
    pub(crate) timeout_ms: u64,
}

/// Why the leader did not apply a forwarded proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WriteRejection {
    /// The receiver is not the leader (the proposal was not appended); the leader it knows.
    NotLeader {
        /// Leader id and member, if one is known.
        leader: Option<(NodeId, Member)>,
    },
    /// Appended but not committed in time: the leader has no quorum.
    NoQuorum {
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// Raft is stopped on the receiver.
    Stopped,
}

/// The answer to a forwarded proposal: the encoded response, or why not.
pub(crate) type WriteReply = Result<Payload, WriteRejection>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_chunks_carry_raw_data() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new(3, 1),
            meta: Default::default(),
            offset: 42,
            data: vec![0, 255, 7],
            done: true,
        };
        let bytes = encode_chunk(req.clone()).unwrap();
        assert!(bytes.ends_with(&[0, 255, 7]));
        assert_eq!(decode_chunk(&bytes).unwrap(), req);
        assert!(decode_chunk(&bytes[..3]).is_err());
        assert!(decode_chunk(&bytes[..10]).is_err());
    }
}
