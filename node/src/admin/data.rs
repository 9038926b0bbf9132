//! The node's state as the admin API reads and changes it: through the cluster (writes
//! committed by a majority, reads from this member's applied state) or, standalone,
//! straight in this node's own store.

use super::reply::{error, Reply};
use crate::cluster::{Applied, ReplicatedState};
use crate::store::{Command, Outcome, Store, StoreError};
use consensus::join::QuicConsensus;
use hyper::StatusCode;
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

/// Where the admin API finds the node's state.
#[derive(Clone)]
pub enum Data {
    /// A standalone node's own store; applied configuration changes go to the SIP
    /// core through `feed`, as a cluster member's state machine sends them.
    Local {
        /// The store.
        store: Arc<Store>,
        /// The SIP core's feed of applied changes.
        feed: mpsc::UnboundedSender<Applied>,
    },
    /// A cluster member (weak: the admin API never keeps Raft from stopping).
    Cluster(Weak<QuicConsensus<ReplicatedState>>),
}

type Failed = Box<Reply>;

fn stopping() -> Failed {
    Box::new(error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this node is shutting down; ask another member",
    ))
}

fn store_failed(e: StoreError) -> Failed {
    tracing::error!(error = %e, "admin: store failed");
    Box::new(error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{e}; see the node's log"),
    ))
}

impl Data {
    /// Reads this node's applied state with `f`.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&rocksdb::DB) -> Result<T, StoreError>,
    ) -> Result<T, Failed> {
        match self {
            Data::Local { store, .. } => store.read(f).map_err(store_failed),
            Data::Cluster(member) => {
                let member = member.upgrade().ok_or_else(stopping)?;
                member
                    .read(f)
                    .map_err(|_| stopping())?
                    .map_err(store_failed)
            }
        }
    }

    /// Like [`Data::read`], on a blocking thread: for reads that take long (a backup),
    /// so that the runtime's workers keep serving Raft heartbeats meanwhile.
    pub async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rocksdb::DB) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Failed> {
        let data = self.clone();
        tokio::task::spawn_blocking(move || data.read(f))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "admin: a blocking read failed");
                Err(Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the read failed; see the node's log",
                )))
            })
    }

    /// Waits until this member has applied everything committed when it asked the
    /// leader, so that a read that follows sees every write acknowledged before
    /// (a read-modify-write must start from the latest version).
    pub async fn catch_up(&self) -> Result<(), Failed> {
        let Data::Cluster(member) = self else {
            return Ok(());
        };
        let member = member.upgrade().ok_or_else(stopping)?;
        member.read_barrier().await.map(|_| ()).map_err(|e| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot reach the cluster's leader ({e}); retry, or check `switchctl cluster status`"),
            ))
        })
    }

    /// Writes `cmd` (committed by a majority in a cluster) and answers what it did.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, Failed> {
        match self {
            Data::Local { store, feed } => {
                let (outcome, mirror) = store.apply_mirrored(&cmd).map_err(store_failed)?;
                if let Some(change) = Command::from_mirror(mirror) {
                    // The core is gone only while the node stops.
                    let _ = feed.send(Applied::Change(change));
                }
                Ok(outcome)
            }
            Data::Cluster(member) => {
                let member = member.upgrade().ok_or_else(stopping)?;
                member.propose(cmd).await.map_err(|e| {
                    Box::new(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the change was not confirmed ({e}); it may still be applied: read it back, and retry when `switchctl cluster status` shows a leader"),
                    ))
                })
            }
        }
    }
}
