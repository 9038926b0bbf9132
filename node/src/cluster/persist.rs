//! The core's writes as Raft proposals: the commands of one commit become one log entry,
//! and the outcome (committed by a majority and applied here, or failed) returns to the
//! core on its completion channel, which releases or refuses the answers that waited.

use super::ReplicatedState;
use crate::core::Completion;
use crate::metrics::Metrics;
use crate::persist::{Persist, WriteId, Written};
use crate::store::Command;
use consensus::rpc::RpcClient;
use consensus::Consensus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Proposals in flight at most; beyond it a write fails at once (the REGISTERs that
/// waited for it get 500 with Retry-After) instead of queueing without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Writes through the cluster.
pub struct ClusterPersist<C: RpcClient> {
    consensus: Arc<Consensus<ReplicatedState, C>>,
    done: mpsc::UnboundedSender<Completion>,
    in_flight: Arc<AtomicUsize>,
    /// Where proposals run: the runtime that made this, not the core's own thread, so
    /// that encoding and handing over entries happens beside the core, not on it.
    runtime: tokio::runtime::Handle,
    /// Where commit latencies go, when someone reads them.
    metrics: Option<Arc<Metrics>>,
}

impl<C: RpcClient> ClusterPersist<C> {
    /// Proposes through `consensus` on the current runtime; outcomes go to `done`.
    /// Must be called from within a Tokio runtime.
    pub fn new(
        consensus: Arc<Consensus<ReplicatedState, C>>,
        done: mpsc::UnboundedSender<Completion>,
    ) -> Self {
        ClusterPersist {
            consensus,
            done,
            in_flight: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            metrics: None,
        }
    }

    /// Records each write's proposal-to-commit time in `metrics.raft_commit`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<C: RpcClient> Persist for ClusterPersist<C> {
    fn write(&mut self, id: WriteId, mut cmds: Vec<Command>) -> Written {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Written::Done(Err("too many cluster writes in flight".into()));
        }
        let cmd = match cmds.len() {
            1 => cmds.remove(0),
            _ => Command::Batch(cmds),
        };
        let (consensus, done, in_flight, metrics) = (
            self.consensus.clone(),
            self.done.clone(),
            self.in_flight.clone(),
            self.metrics.clone(),
        );
        self.runtime.spawn(async move {
            let proposed = std::time::Instant::now();
            let result = consensus
                .propose(cmd)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let (Some(m), Ok(())) = (&metrics, &result) {
                m.raft_commit.observe_duration(proposed.elapsed());
            }
            // The core is gone only when the node stops.
            let _ = done.send((id, result));
        });
        Written::Pending
    }
}
