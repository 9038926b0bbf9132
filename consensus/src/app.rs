//! What the application plugs into consensus, so this crate stays generic over the
//! replicated commands (the node implements it for its typed `Command` enum).

/// The replicated application: its commands, their responses, and how one is applied.
pub trait App: Send + Sync + 'static {
    /// A change to the replicated state.
    type Command: serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static;
    /// What applying a command answers to its proposer.
    type Response: serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + Default
        + 'static;

    /// Column families holding the application's replicated state (created in the consensus DB).
    fn column_families(&self) -> Vec<String>;

    /// Applies one committed command: stage its writes in `batch` (read current state from `db`);
    /// consensus adds its own bookkeeping (last applied, membership) to the same batch and writes it
    /// atomically. Must be deterministic.
    fn apply(
        &self,
        db: &rocksdb::DB,
        batch: &mut rocksdb::WriteBatch,
        cmd: &Self::Command,
    ) -> Self::Response;

    /// Called after a snapshot replaced the application's state (a lagging or new
    /// member catching up): the entries it covers never pass through [`App::apply`]
    /// here, so anything the application mirrors elsewhere must be rebuilt from `db`.
    fn installed(&self, db: &rocksdb::DB) {
        let _ = db;
    }
}
