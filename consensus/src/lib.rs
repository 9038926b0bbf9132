//! Raft replication of cluster state (openraft on RocksDB over QUIC); filled by the consensus issue.
