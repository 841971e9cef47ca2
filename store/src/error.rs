//! The store's one error type: what PostgreSQL refused, what a caller asked
//! for that does not exist, and whether the database is simply unreachable.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name or id asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An argument is malformed (the message names it and its value).
    #[error("{0}")]
    InvalidArgument(String),
    /// The database is unreachable or not ready, or stored data is unreadable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("while migrating the schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result with the store's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error means the database could not be reached (as opposed
    /// to a statement the database refused): worth retrying as it is.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Database(e) => is_connection_error(e),
            Error::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_connection_error(e),
            _ => false,
        }
    }

    /// Whether the schema is not there yet (a request before the first
    /// migration ran: SQLSTATE 42P01, undefined table).
    pub fn is_schema_missing(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01"))
    }
}

/// Whether a sqlx error means the server could not be reached or went away.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
        // class 08: connection exceptions; 3D000 the database does not exist
        // (yet), class 28: authorization (a secret not rotated in yet): the
        // store is not reachable as configured, which an operator fixes
        // while the collector waits, live but not ready.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("28") || c == "3D000"
        }),
        _ => false,
    }
}
