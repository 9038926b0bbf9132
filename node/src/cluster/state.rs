//! The node's state (extensions, bindings, CDRs) as the application that consensus
//! replicates: the same typed [`Command`]s that change a single node's store, applied
//! by [`crate::store::stage`] to the same column families inside the consensus database.

use crate::store::{self, Command};

/// The replicated state machine of a cluster member.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplicatedState;

impl consensus::App for ReplicatedState {
    type Command = Command;
    type Response = ();

    fn column_families(&self) -> Vec<String> {
        store::CFS.iter().map(|c| c.to_string()).collect()
    }

    fn apply(&self, db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, cmd: &Command) {
        // Consensus created the column families, so these fail only on a broken disk;
        // the entry is then logged and skipped on this replica rather than stopping it.
        let staged = store::next_cdr_number(db)
            .and_then(|mut next| store::stage(db, batch, std::slice::from_ref(cmd), &mut next));
        if let Err(e) = staged {
            tracing::error!(error = %e, ?cmd, "replicated command not applied");
        }
    }
}
