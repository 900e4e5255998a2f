use std::path::PathBuf;

use crate::model::RunId;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store existed here but is missing or unreadable: refuse to start
    /// fresh, since that would forget every seen item and fire them all again.
    #[error("the store at {path} is damaged: {reason}. Restore it from a backup, or move it aside to start a new store (every trigger will baseline again)")]
    Damaged { path: PathBuf, reason: String },

    #[error("no store at {path}: {reason}")]
    NotFound { path: PathBuf, reason: String },

    #[error("{path} is not empty and holds no flowd store; refusing to create one inside it")]
    NotAStore { path: PathBuf },

    #[error("the store at {path} is in use by another process")]
    Locked { path: PathBuf },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A record read from the database does not decode.
    #[error("corrupt record in {tree} (key {key}): {reason}")]
    Corrupt { tree: &'static str, key: String, reason: String },

    #[error("run {0} not found")]
    RunNotFound(RunId),

    /// The change would break an invariant (e.g. send a step twice, or
    /// process a webhook event twice).
    #[error("{0}")]
    Conflict(String),

    /// A cluster node's lease (on a trigger) or claim (on a run) moved to another node, or
    /// this node was superseded: what it tried is not written.
    #[error("{0}")]
    Fenced(String),

    #[error("invalid input: {0}")]
    Invalid(String),

    #[error("database: {0}")]
    Db(#[from] sled::Error),

    #[error("database: {0}")]
    Fjall(#[from] fjall::Error),

    /// An error from PostgreSQL or the connection to it (see [`crate::pg`]).
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),

    /// The PostgreSQL schema could not be brought to this build's version.
    #[error("migrating the PostgreSQL schema: {0}")]
    Migration(String),
}

impl StoreError {
    /// The database server could not be reached or ended the session (it restarted, the
    /// network dropped): the same call may succeed once it answers again. Never true of the
    /// embedded stores, whose errors are the disk's.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::Postgres(e) = self else { return false };
        if e.is_closed() {
            return true;
        }
        if let Some(code) = e.code() {
            use postgres::error::SqlState;
            return code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW;
        }
        // Connecting failed, or the socket did.
        std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
    }
}

impl From<fjall::LsmError> for StoreError {
    fn from(e: fjall::LsmError) -> Self {
        StoreError::Fjall(fjall::Error::Storage(e))
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        }
    }
}
