//! The node's state (extensions, bindings, CDRs) as the application that consensus
//! replicates: the same typed [`Command`]s that change a single node's store, applied
//! by [`crate::store::stage`] to the same column families inside the consensus database.

use crate::core::InitialState;
use crate::store::{self, Command, Outcome};
use tokio::sync::mpsc;

/// What the replicated state tells the SIP core.
#[derive(Debug)]
pub enum Applied {
    /// A committed change (binding or extension) to mirror in memory.
    Change(Command),
    /// A snapshot replaced the whole state: rebuild the memory view from this.
    Reset(InitialState),
}

/// The replicated state machine of a cluster member.
#[derive(Debug, Default, Clone)]
pub struct ReplicatedState {
    /// Where applied changes to what the SIP core keeps in memory (bindings,
    /// extensions) are sent, so every member's core follows the replicated state.
    feed: Option<mpsc::UnboundedSender<Applied>>,
}

impl ReplicatedState {
    /// A state machine that tells the core about every applied binding or extension change.
    pub fn with_feed(feed: mpsc::UnboundedSender<Applied>) -> Self {
        ReplicatedState { feed: Some(feed) }
    }
}

/// True when applying `cmd` numbers a CDR.
fn has_cdr(cmd: &Command) -> bool {
    match cmd {
        Command::AppendCdr(_) => true,
        Command::Batch(inner) | Command::AllOrNothing(inner) => inner.iter().any(has_cdr),
        _ => false,
    }
}

impl consensus::App for ReplicatedState {
    type Command = Command;
    type Response = Outcome;

    fn column_families(&self) -> Vec<String> {
        store::CFS.iter().map(|c| c.to_string()).collect()
    }

    fn apply(&self, db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, cmd: &Command) -> Outcome {
        // Consensus created the column families, so these fail only on a broken disk;
        // the entry is then logged and skipped on this replica rather than stopping it.
        // The CDR counter is read only for commands that number CDRs: most entries are
        // binding changes, and this runs for every entry on every member.
        let next = if has_cdr(cmd) {
            store::next_cdr_number(db)
        } else {
            Ok(0)
        };
        let mut mirror = Vec::new();
        let staged = next.and_then(|mut next| {
            let wanted = self.feed.is_some().then_some(&mut mirror);
            store::stage(db, batch, std::slice::from_ref(cmd), &mut next, wanted)
        });
        let outcome = match staged {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, ?cmd, "replicated command not applied");
                return Outcome::Done;
            }
        };
        if let (Some(feed), Some(change)) = (&self.feed, Command::from_mirror(mirror)) {
            // The core is gone only while the node stops.
            let _ = feed.send(Applied::Change(change));
        }
        outcome
    }

    fn installed(&self, db: &rocksdb::DB) {
        let Some(feed) = &self.feed else { return };
        let state = store::bindings(db).and_then(|bindings| {
            Ok(InitialState {
                bindings,
                extensions: store::extensions(db)?,
            })
        });
        match state {
            Ok(state) => {
                let _ = feed.send(Applied::Reset(state));
            }
            Err(e) => tracing::error!(error = %e, "cannot read the installed snapshot"),
        }
    }
}
