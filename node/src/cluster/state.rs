//! The node's state (extensions, bindings, CDRs) as the application that consensus
//! replicates: the same typed [`Command`]s that change a single node's store, applied
//! by [`crate::store::stage`] to the same column families inside the consensus database.

use crate::core::InitialState;
use crate::store::{self, Command};
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
        Command::Batch(inner) => inner.iter().any(has_cdr),
        _ => false,
    }
}

/// The part of `cmd` the core mirrors in memory (CDRs and markers it does not).
fn for_core(cmd: &Command) -> Option<Command> {
    match cmd {
        Command::AppendCdr(_) | Command::MarkSeeded => None,
        Command::Batch(inner) => {
            let kept: Vec<Command> = inner.iter().filter_map(for_core).collect();
            (!kept.is_empty()).then_some(Command::Batch(kept))
        }
        other => Some(other.clone()),
    }
}

impl consensus::App for ReplicatedState {
    type Command = Command;
    type Response = ();

    fn column_families(&self) -> Vec<String> {
        store::CFS.iter().map(|c| c.to_string()).collect()
    }

    fn apply(&self, db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, cmd: &Command) {
        // Consensus created the column families, so these fail only on a broken disk;
        // the entry is then logged and skipped on this replica rather than stopping it.
        // The CDR counter is read only for commands that number CDRs: most entries are
        // binding changes, and this runs for every entry on every member.
        let next = if has_cdr(cmd) {
            store::next_cdr_number(db)
        } else {
            Ok(0)
        };
        let staged =
            next.and_then(|mut next| store::stage(db, batch, std::slice::from_ref(cmd), &mut next));
        if let Err(e) = staged {
            tracing::error!(error = %e, ?cmd, "replicated command not applied");
            return;
        }
        if let (Some(feed), Some(c)) = (&self.feed, for_core(cmd)) {
            // The core is gone only while the node stops.
            let _ = feed.send(Applied::Change(c));
        }
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
