//! Where the SIP core's durable changes go, and how it learns they are safe: this
//! node's own store answers at once; a cluster answers when the change is committed by
//! a majority, later, through the completion channel given to [`crate::core::Core::run`].

use crate::store::{Command, Store};
use std::sync::Arc;

/// Identifies one write so that its outcome finds what waited for it. Zero: nothing
/// waits (CDRs, expiry sweeps).
pub type WriteId = u64;

/// The outcome of a write: Ok, or why it failed.
pub type WriteResult = Result<(), String>;

/// What became of a write when it was started.
#[derive(Debug)]
pub enum Written {
    /// Finished already.
    Done(WriteResult),
    /// Reported later as `(id, result)` on the completion channel.
    Pending,
}

/// A destination for the core's commands.
pub trait Persist: Send {
    /// Starts writing `cmds` as one atomic unit.
    fn write(&mut self, id: WriteId, cmds: Vec<Command>) -> Written;
}

/// This node's own RocksDB store, written synchronously.
pub struct LocalStore(pub Arc<Store>);

impl Persist for LocalStore {
    fn write(&mut self, _id: WriteId, cmds: Vec<Command>) -> Written {
        Written::Done(
            self.0
                .apply_all(&cmds)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    }
}
